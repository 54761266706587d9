"""Progress of long loops: plain lines at a steady pace off a terminal, a rich bar on one."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from latentspace.progress import NullProgress, PlainProgress, RichProgress, progress_for, shown


class Clock:
    """A clock the test moves by hand, so lines can be checked without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_at_the_interval_with_count_rate_and_eta():
    clock, lines = Clock(), []
    progress = PlainProgress(lines.append, what="steps", verb="trained", interval=5.0, clock=clock)
    progress.start(100)
    for _ in range(8):  # a step every 2 s: lines at 6 s (the first advance past 5 s) and 12 s
        clock.now += 2.0
        progress.advance()
        progress.describe(f"loss {3 - clock.now / 10:.2f}")
    progress.close()
    assert lines == [
        "[0:00:06] trained 3/100 steps (0.5 steps/s, ETA 0:03:14) - loss 2.60",
        "[0:00:12] trained 6/100 steps (0.5 steps/s, ETA 0:03:08) - loss 2.00",
        "[0:00:16] trained 8/100 steps (0.5 steps/s, ETA 0:03:04) - loss 1.40",  # close: the final count
    ]


def test_plain_lines_for_an_unknown_total_and_a_resumed_count():
    clock, lines = Clock(), []
    unknown = PlainProgress(lines.append, clock=clock)
    unknown.start(None)
    unknown.close()
    assert lines[-1] == "[0:00:00] embedded 0 images (0.0 images/s)"  # no total: no ETA

    # A run resumed at step 40 of 100: the count starts there, the rate counts only new steps.
    resumed = PlainProgress(lines.append, what="steps", verb="trained", interval=10.0, clock=clock)
    resumed.start(100, done=40)
    clock.now += 10.0
    resumed.advance(20)
    assert lines[-1] == "[0:00:10] trained 60/100 steps (2.0 steps/s, ETA 0:00:20)"
    resumed.close()  # nothing new since that line: close does not repeat it
    assert len(lines) == 2


def test_slow_loops_keep_significant_digits_in_the_rate():
    clock, lines = Clock(), []
    slow = PlainProgress(lines.append, what="steps", verb="trained", clock=clock)
    slow.start(10)
    clock.now += 40.0
    slow.advance()
    assert lines == ["[0:00:40] trained 1/10 steps (0.025 steps/s, ETA 0:06:00)"]


def test_shown_closes_the_progress_when_the_loop_fails():
    lines = []
    with pytest.raises(RuntimeError), shown(PlainProgress(lines.append), 10) as progress:
        progress.advance(3)
        raise RuntimeError("the data stream ended")
    assert len(lines) == 1 and " 3/10 images " in lines[0]


def test_the_console_decides_the_form():
    assert isinstance(progress_for(None), NullProgress)
    assert isinstance(progress_for(Console(file=io.StringIO(), quiet=True)), NullProgress)  # other ranks
    log = io.StringIO()
    plain = progress_for(Console(file=log, width=40), what="steps", verb="trained", interval=0.0)
    assert isinstance(plain, PlainProgress)
    with shown(plain, 3) as progress:
        progress.describe("loss 1.234, 812 images/s")
        progress.advance()
    # Printed whole (no wrapping at the console's width, no markup parsed out of the text).
    assert re.fullmatch(
        r"\[0:00:00\] trained 1/3 steps \([\d.e+]+ steps/s, ETA 0:00:00\) - loss 1.234, 812 images/s\n", log.getvalue()
    ), log.getvalue()

    screen = io.StringIO()
    bar = progress_for(Console(file=screen, force_terminal=True, width=160), what="steps", verb="trained")
    assert isinstance(bar, RichProgress)
    with shown(bar, 10) as progress:
        progress.describe("[part] 1/2")
        progress.advance(4)
    drawn = screen.getvalue()
    assert "trained" in drawn and "4/10" in drawn and "steps/s" in drawn and "ETA" in drawn
    assert "[part] 1/2" in drawn  # described text is shown as is


def test_training_off_a_terminal_prints_progress_lines(tmp_path, text_tower):
    from latentspace.train.loop import train

    import fakes

    shards = fakes.brace(fakes.write_shards(tmp_path / "shards", n_shards=1, per_shard=16))
    log = io.StringIO()  # what a CI job, nohup or a container captures: not a terminal
    train(fakes.tiny_config(tmp_path, shards, steps=4), console=Console(file=log, width=80))
    lines = [line for line in log.getvalue().splitlines() if " trained " in line]
    assert lines, log.getvalue()
    assert re.fullmatch(
        r"\[\d+:\d\d:\d\d\] trained 4/4 steps \([\d.e+-]+ steps/s, ETA 0:00:00\) - "
        r"loss \d+\.\d{3}, \d+ images/s",
        lines[-1],
    ), lines
