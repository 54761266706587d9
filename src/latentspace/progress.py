"""Progress of a long loop: a live bar on a terminal, plain lines everywhere else.

A bar that redraws itself is right for a person watching a terminal and wrong for a log file, a
CI job, a container or `nohup`: there rich hides live displays, so a 20-minute training run
printed nothing at all. So every long loop (training, the emoji corpus build, evaluation,
collection builds) reports through one small interface, `Progress`, and `progress_for` picks its
form from where the output goes:

    terminal      a rich bar: count, rate (unit/s), elapsed time and ETA, redrawn in place
    anything else a line every `interval` seconds, and one at the end:
                  "[0:01:40] trained 120/700 steps (1.2 steps/s, ETA 0:08:03) - loss 2.345"
                  so a log shows that the job is alive, how far it got and how fast it goes

A loop calls `start(total)` (total None when the amount of work is not known in advance),
`advance(n)` as work completes, `describe(text)` for what it is doing now (a part, a task, the
latest loss), and `close()`; `shown(progress, total)` does the start and close around a block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

from rich import progress as bars
from rich.console import Console

# Seconds between two plain lines: often enough that a stuck job shows within moments, rarely
# enough that a long run's log stays readable (a 20-minute run: about 240 lines).
DEFAULT_INTERVAL = 5.0


class Progress(Protocol):
    """What a loop calls as it goes. `done` in start() is work finished before this run (a
    resumed training run starts at its checkpoint's step); the rate counts only new work."""

    def start(self, total: int | None, done: int = 0) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def describe(self, text: str) -> None: ...

    def close(self) -> None: ...


@contextmanager
def shown(progress: Progress, total: int | None, done: int = 0) -> Iterator[Progress]:
    """Start `progress` for the block and close it however the block ends (a bar left running
    would keep redrawing over the error message)."""
    progress.start(total, done)
    try:
        yield progress
    finally:
        progress.close()


def format_duration(seconds: float | None) -> str:
    """0:01:05 style; "?" when unknown (no rate yet, or no total)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    return str(timedelta(seconds=int(round(seconds))))


def format_rate(per_second: float, what: str) -> str:
    # One decimal is plenty for images/s; a slow loop (a big model's training steps) would show
    # "0.0 steps/s", so below 1 two significant digits are kept instead.
    number = f"{per_second:.1f}" if per_second >= 1 or per_second == 0 else f"{per_second:.2g}"
    return f"{number} {what}/s"


class Rate:
    """Work per second since start (steadier than a moving window when work arrives in bursts,
    as it does: one model forward completes a whole batch at once)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, done: int = 0) -> None:
        self.clock, self.started = clock, clock()
        self.initial = self.done = done

    def add(self, n: int) -> None:
        self.done += n

    def elapsed(self) -> float:
        return self.clock() - self.started

    def per_second(self) -> float:
        elapsed = self.elapsed()
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def eta(self, total: int | None) -> float | None:
        rate = self.per_second()
        if total is None or rate <= 0:
            return None
        return max(0.0, (total - self.done) / rate)


class NullProgress:
    """Reports nothing (library calls, tests, the non-zero ranks of a multi-process job)."""

    def start(self, total: int | None, done: int = 0) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """A line every `interval` seconds through `emit`, and one at close: for logs and pipes.

    Lines are written from advance(), so a loop stuck inside one item writes nothing until it
    moves; the clock is injectable so tests need not sleep."""

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        what: str = "images",
        verb: str = "embedded",
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit, self.what, self.verb, self.interval, self.clock = emit, what, verb, interval, clock
        self.total: int | None = None
        self.rate = Rate(clock)
        self.text = ""
        self._last_time = clock()
        self._last_done: int | None = None  # the count the last line showed

    def start(self, total: int | None, done: int = 0) -> None:
        self.total, self.rate = total, Rate(self.clock, done)
        self._last_time, self._last_done = self.clock(), None

    def describe(self, text: str) -> None:
        self.text = text

    def advance(self, n: int = 1) -> None:
        self.rate.add(n)
        if self.clock() - self._last_time >= self.interval:
            self._write()

    def line(self) -> str:
        done, total = self.rate.done, self.total
        count = f"{done}/{total}" if total is not None else f"{done}"
        eta = f", ETA {format_duration(self.rate.eta(total))}" if total is not None else ""
        extra = f" - {self.text}" if self.text else ""
        return (
            f"[{format_duration(self.rate.elapsed())}] {self.verb} {count} {self.what} "
            f"({format_rate(self.rate.per_second(), self.what)}{eta}){extra}"
        )

    def _write(self) -> None:
        self._last_time, self._last_done = self.clock(), self.rate.done
        self.emit(self.line())

    def close(self) -> None:
        # The closing line gives the final count and rate, unless the last line already did.
        if self._last_done is None or self._last_done != self.rate.done:
            self._write()


class RichProgress:
    """rich's live bar: count, rate, elapsed time, ETA and what describe() said last (an
    indeterminate bar when the total is unknown)."""

    def __init__(self, console: Console, *, what: str = "images", verb: str = "embedded") -> None:
        self.what, self.verb = what, verb
        self.rate = Rate()
        self.text = ""
        # The described text is data (a path, a task name): shown as is, never parsed as markup.
        self._bar = bars.Progress(
            bars.TextColumn("[bold]{task.description}"),
            bars.BarColumn(),
            bars.MofNCompleteColumn(),
            bars.TaskProgressColumn(),
            bars.TextColumn("{task.fields[rate]}"),
            bars.TimeElapsedColumn(),
            bars.TextColumn("ETA"),
            bars.TimeRemainingColumn(),
            bars.TextColumn("{task.fields[text]}", markup=False),
            console=console,
            transient=False,
        )
        self._task = None

    def start(self, total: int | None, done: int = 0) -> None:
        self.rate = Rate(done=done)
        self._bar.start()
        self._task = self._bar.add_task(
            self.verb, total=total, completed=done, rate=format_rate(0.0, self.what), text=self.text
        )

    def describe(self, text: str) -> None:
        self.text = text  # kept for start() when said before it
        if self._task is not None:
            self._bar.update(self._task, text=text)

    def advance(self, n: int = 1) -> None:
        self.rate.add(n)
        if self._task is not None:
            self._bar.update(self._task, advance=n, rate=format_rate(self.rate.per_second(), self.what))

    def close(self) -> None:
        self._bar.stop()


def progress_for(
    console: Console | None, *, what: str = "images", verb: str = "embedded", interval: float = DEFAULT_INTERVAL
) -> Progress:
    """The right progress for `console`: a bar on a terminal, plain lines otherwise, nothing
    without a console or with a quiet one. `what` names the unit counted ("images", "steps"),
    `verb` what is done to it ("embedded", "trained")."""
    if console is None or console.quiet:
        return NullProgress()
    if console.is_terminal:
        return RichProgress(console, what=what, verb=verb)
    return PlainProgress(
        lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
        what=what,
        verb=verb,
        interval=interval,
    )
