"""Show and save suite results: a table for people, JSON for comparing models later."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentspace.eval.runner import SuiteResult, TaskResult


def print_table(result: SuiteResult, console: Console | None = None) -> None:
    """One row per task: main metric as %, chance beside it (small tasks have high chance)."""
    table = Table(title=f"{result.suite} — {result.model} ({result.space}), values in %")
    for column in ("task", "metric"):
        table.add_column(column, no_wrap=True)  # names must stay readable on an 80-column terminal
    for column in ("value", "chance", "n", "skipped", "s"):
        table.add_column(column, justify="right")
    for task in result.tasks:
        table.add_row(
            task.name,
            task.main_metric,
            _percent(task.main_value),
            _percent(task.chance[task.main_metric]),
            str(task.n_samples),
            _skipped(task),
            f"{task.seconds:.1f}",
        )
    for name in result.missing:
        table.add_row(name, "", "[yellow]missing[/yellow]", "", "", "", "")
    if result.tasks:
        table.add_section()
        average = _percent(result.average)
        table.add_row(f"average of {len(result.tasks)}", "main metrics", average, "", "", "", "")
    (console or Console()).print(table)


def write_json(result: SuiteResult, path: Path) -> None:
    """Every metric, chance level and count per task, plus the suite average."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(result), "average": result.average}, indent=2) + "\n")


def read_json(path: Path) -> SuiteResult:
    """The inverse of write_json, so saved runs of several models can be tabled together."""
    raw = json.loads(Path(path).read_text())
    tasks = [TaskResult(**task) for task in raw["tasks"]]
    return SuiteResult(raw["model"], raw["space"], raw["suite"], tasks=tasks, missing=raw["missing"])


def _percent(value: float | None) -> str:
    """One decimal, or two below 1% so that tiny chance levels do not read as 0.1 or 0.0."""
    if value is None:
        return ""
    return f"{100 * value:.2f}" if value < 0.01 else f"{100 * value:.1f}"


def _skipped(task: TaskResult) -> str:
    if not task.n_skipped:
        return "0"
    return f"[red]{task.n_skipped}[/red]"
