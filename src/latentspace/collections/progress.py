"""Progress for long jobs: a live bar on a terminal, plain lines everywhere else.

A bar that redraws itself is right for a person watching a terminal and wrong for a log file, a
CI job or `nohup`: there it either prints nothing (rich hides live displays off a terminal) or
hundreds of carriage-return frames. So a job reports through one small interface, `Progress`,
and `progress_for` picks the form from where the output goes:

    terminal      a rich bar: count, rate (items/s) and ETA, redrawn in place
    anything else a line every `interval` seconds: "embedded 1200/5000 images (240.3 images/s,
                  ETA 0:00:16)", and one at the end, so a log shows the job is alive and how fast

Nothing here knows about collections: a training loop can report steps with the same classes
(`progress_for(console, total=steps, what="steps", verb="trained")`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Callable, Protocol

from rich.console import Console


class Progress(Protocol):
    """What a job calls as it goes; `total` may be None when the amount of work is unknown."""

    def start(self, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def describe(self, text: str) -> None: ...

    def close(self) -> None: ...


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    return str(timedelta(seconds=int(round(seconds))))


class Rate:
    """Items per second over the whole job so far (steadier than a moving window when batches
    arrive in bursts, which they do: one model forward completes a whole batch at once)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.started, self.done = clock, clock(), 0

    def add(self, n: int) -> None:
        self.done += n

    def per_second(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, total: int | None) -> float | None:
        rate = self.per_second()
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.done) / rate)


class NullProgress:
    """Reports nothing (library calls, tests)."""

    def start(self, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """A line every `interval` seconds (and one at close) through `emit`: for logs and pipes."""

    def __init__(self, emit: Callable[[str], None], *, what: str = "images", verb: str = "embedded",
                 interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.what, self.verb, self.interval, self.clock = emit, what, verb, interval, clock
        self.total: int | None = None
        self.rate = Rate(clock)
        self.text = ""
        self._last = clock()

    def start(self, total: int | None) -> None:
        self.total, self.rate, self._last = total, Rate(self.clock), self.clock()

    def describe(self, text: str) -> None:
        self.text = text

    def advance(self, n: int = 1) -> None:
        self.rate.add(n)
        if self.clock() - self._last >= self.interval:
            self._line()

    def line(self) -> str:
        count = f"{self.rate.done}/{self.total}" if self.total is not None else f"{self.rate.done}"
        eta = f", ETA {format_eta(self.rate.eta(self.total))}" if self.total is not None else ""
        extra = f" - {self.text}" if self.text else ""
        return f"{self.verb} {count} {self.what} ({self.rate.per_second():.1f} {self.what}/s{eta}){extra}"

    def _line(self) -> None:
        self._last = self.clock()
        self.emit(self.line())

    def close(self) -> None:
        self._line()


class RichProgress:
    """rich's live bar with count, rate and ETA (an indeterminate bar when the total is unknown)."""

    def __init__(self, console: Console, *, what: str = "images", verb: str = "embedded") -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.what, self.verb = what, verb
        self.rate = Rate()
        self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
        self._task = None

    def start(self, total: int | None) -> None:
        self.rate = Rate()
        self._bar.start()
        self._task = self._bar.add_task(self.verb, total=total, rate=f"0.0 {self.what}/s")

    def describe(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=f"{self.verb} {text}")

    def advance(self, n: int = 1) -> None:
        self.rate.add(n)
        if self._task is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate.per_second():.1f} {self.what}/s")

    def close(self) -> None:
        self._bar.stop()


def progress_for(console: Console | None, *, what: str = "images", verb: str = "embedded",
                 interval: float = 5.0) -> Progress:
    """The right progress for `console`: a bar on a terminal, plain lines otherwise, nothing
    without a console."""
    if console is None:
        return NullProgress()
    if console.is_terminal:
        return RichProgress(console, what=what, verb=verb)
    return PlainProgress(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                         what=what, verb=verb, interval=interval)
