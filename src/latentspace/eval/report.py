"""Show and save suite results: a table for people, JSON for comparing models later, and a
Markdown table and bar chart that put several models side by side.

A suite run with missing tasks is always labelled incomplete: its average covers fewer tasks than
the published suite score, and reading it as that score would overstate or understate a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentspace.eval.runner import SuiteResult, TaskResult


def print_table(result: SuiteResult, console: Console | None = None) -> None:
    """One row per task: main metric as %, chance beside it (small tasks have high chance)."""
    table = Table(
        title=f"{result.suite} — {result.model} ({result.space}), values in %",
        caption=f"forwards on {runtimes_text(result.runtimes)}" if result.runtimes else None,
    )
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
        for group, value in result.group_averages().items():
            table.add_row(f"group {group}", "main metrics", _percent(value) or "—", "", "", "", "")
        table.add_row(_average_label(result), "main metrics", _percent(result.average), "", "", "", "")
    if result.text_tasks:
        table.add_section()  # below the average: these rows are not part of it
        table.add_row("[italic]text side alone[/italic]", "", "", "", "", "", "")
        for task in result.text_tasks:
            table.add_row(
                task.name,
                task.main_metric,
                _percent(task.main_value),
                _percent(task.chance[task.main_metric]),
                str(task.n_samples),
                "",
                f"{task.seconds:.1f}",
            )
    (console or Console()).print(table)


def _text_label(name: str) -> str:
    """Text-side rows are marked as such in every output, so they are never read as image tasks
    (the console table puts them under a "text side alone" heading instead)."""
    return f"text: {name}"


def print_text_comparison(results: list[SuiteResult], console: Console | None = None) -> None:
    """Per text task, one row per model with every ranking metric, chance last. Models that share a
    text side (a model directory and its text model alone) must show the same numbers."""
    for name in _text_task_order(results):
        found = [(r.model, t) for r in results if (t := _text_task(r, name)) is not None]
        metrics = list(found[0][1].metrics)
        table = Table(title=f"{_text_label(name)} (text side alone), values in %")
        table.add_column("model", no_wrap=True)
        for column in (*metrics, "n", "s"):
            table.add_column(column, justify="right")
        for model, task in found:
            table.add_row(
                model, *(_percent(task.metrics[m]) for m in metrics), str(task.n_samples), f"{task.seconds:.1f}"
            )
        table.add_section()
        table.add_row("chance", *(_percent(found[0][1].chance[m]) for m in metrics), "", "")
        (console or Console()).print(table)


def _average_label(result: SuiteResult) -> str:
    if result.complete:
        return f"average of {len(result.tasks)}"
    return f"average, incomplete ({len(result.tasks)} of {result.n_expected} tasks)"


def write_json(result: SuiteResult, path: Path) -> None:
    """Every metric, chance level and count per task, plus the suite and group averages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "average": result.average,
        "complete": result.complete,
        "group_averages": result.group_averages(),
    }
    path.write_text(json.dumps({**asdict(result), **summary}, indent=2) + "\n")


MISSING = "—"


def write_markdown(results: list[SuiteResult], path: Path) -> None:
    """One column per model, one row per task (main metric, %), then group averages and the average.

    A task a model did not run shows "—", and so does any group it belongs to; the average row
    says "incomplete (n of N)" for such a model rather than passing a partial mean off as the
    suite score.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(_markdown_lines(results)) + "\n")


def _markdown_lines(results: list[SuiteResult]) -> list[str]:
    suites = sorted({r.suite for r in results})
    lines = [f"Suite: {', '.join(suites)}. Main metric per task, in %; {MISSING} = not run."]
    if any(r.text_tasks for r in results):
        lines[0] += " `text:` rows score the text side alone and are not part of any average."
    lines.append("")
    header = ["task", "metric", "chance", *(_column_name(r) for r in results)]
    lines += [_md_row(header), _md_row(["---", "---", "---:", *("---:" for _ in results)])]
    for name in _task_order(results):
        lines.append(_md_row([name, *_metric_cells([_task(r, name) for r in results])]))
    for group in _group_order(results):
        values = [r.group_averages().get(group) for r in results]
        lines.append(_md_row([f"**{group}**", "group mean", "", *(_percent(v) or MISSING for v in values)]))
    if any(r.tasks or r.missing for r in results):
        lines.append(_md_row(["**average**", "all tasks", "", *(_average_cell(r) for r in results)]))
    for name in _text_task_order(results):
        found = [_text_task(r, name) for r in results]
        lines.append(_md_row([_text_label(name), *_metric_cells(found)]))
    ran = [r for r in results if r.runtimes]
    if ran:
        lines += ["", "Forwards ran on: " + "; ".join(f"{r.model}: {runtimes_text(r.runtimes)}" for r in ran) + "."]
    return lines


def runtimes_text(runtimes: dict[str, str]) -> str:
    """{'image': 'openvino-fp32', 'text': 'torch-fp32'} -> 'image openvino-fp32, text torch-fp32'."""
    return ", ".join(f"{modality} {name}" for modality, name in runtimes.items())


def _metric_cells(found: list[TaskResult | None]) -> list[str]:
    """metric, chance and one value per model for a row; chance and metric from any model that ran it."""
    reference = next((t for t in found if t is not None), None)
    metric = reference.main_metric if reference else ""
    chance = _percent(reference.chance[reference.main_metric]) if reference else MISSING
    return [metric, chance, *(_percent(t.main_value) if t else MISSING for t in found)]


def _average_cell(result: SuiteResult) -> str:
    if result.average is None:
        return MISSING
    if result.complete:
        return f"**{_percent(result.average)}**"
    return f"{_percent(result.average)} (incomplete: {len(result.tasks)} of {result.n_expected})"


def _column_name(result: SuiteResult) -> str:
    return result.model.replace("|", "/")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _task_order(results: list[SuiteResult]) -> list[str]:
    """Every task any model ran or missed; the model that ran the most tasks sets the order, since a
    result lists its tasks in suite order and its missing tasks after them."""
    names: dict[str, None] = {}
    for result in sorted(results, key=lambda r: len(r.tasks), reverse=True):
        for name in [t.name for t in result.tasks] + result.missing:
            names.setdefault(name)
    return list(names)


def _group_order(results: list[SuiteResult]) -> list[str]:
    groups: dict[str, None] = {}
    for result in results:
        for group in result.groups:
            groups.setdefault(group)
    return list(groups)


def _text_task_order(results: list[SuiteResult]) -> list[str]:
    return list(dict.fromkeys(t.name for r in results for t in r.text_tasks))


def _task(result: SuiteResult, name: str) -> TaskResult | None:
    return next((t for t in result.tasks if t.name == name), None)


def _text_task(result: SuiteResult, name: str) -> TaskResult | None:
    return next((t for t in result.text_tasks if t.name == name), None)


def _chart_rows(results: list[SuiteResult]) -> list[tuple[str, list[TaskResult | None]]]:
    """(label, each model's result or None) per bar group: image tasks, then text-side tasks."""
    rows = [(name, [_task(r, name) for r in results]) for name in _task_order(results)]
    rows += [(_text_label(name), [_text_task(r, name) for r in results]) for name in _text_task_order(results)]
    return rows


def write_chart(results: list[SuiteResult], path_png: Path) -> None:
    """A grouped horizontal bar chart: per task, one bar per model (main metric, %), chance as a
    black tick, so a score near chance is visible at a glance. Missing bars are labelled."""
    # A bare Figure renders with Agg and never touches pyplot's global backend or a display.
    from matplotlib.figure import Figure

    rows = _chart_rows(results)
    height = 1.6 + 0.22 * len(rows) * max(1.5, len(results) * 0.8)
    figure = Figure(figsize=(9, height), layout="constrained")
    axes = figure.subplots()
    for i, result in enumerate(results):
        _draw_model_bars(axes, result.model, [found[i] for _, found in rows], i, len(results))
    _draw_chance(axes, [found for _, found in rows])
    axes.set_yticks(range(len(rows)), labels=[label for label, _ in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)  # first task at the top, as in the tables; no empty margin
    axes.set_xlim(0, 100)
    axes.set_xlabel("main metric (%)")
    axes.grid(axis="x", alpha=0.3)
    # Outside the axes: inside, it would hide the bars of whichever tasks sit under it.
    figure.legend(loc="outside lower center", ncols=min(4, len(results) + 1), fontsize=8, frameon=False)
    axes.set_title(", ".join(sorted({r.suite for r in results})))
    Path(path_png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path_png, dpi=120)


def _draw_model_bars(axes, model: str, values: list[TaskResult | None], index: int, n_models: int) -> None:
    """One model's bars (one per row), shifted within each row; a missing task gets a grey label."""
    bar_height = 0.8 / n_models
    offset = (index - (n_models - 1) / 2) * bar_height
    rows = [row for row, task in enumerate(values) if task is not None]
    widths = [100 * values[row].main_value for row in rows]
    axes.barh([row + offset for row in rows], widths, height=bar_height, label=model)
    for row, task in enumerate(values):
        if task is None:
            axes.text(1, row + offset, "missing", va="center", fontsize=6, color="grey")


def _draw_chance(axes, rows: list[list[TaskResult | None]]) -> None:
    """One chance tick per row (chance depends on the task, not the model)."""
    ticks, levels = [], []
    for row, found in enumerate(rows):
        task = next((t for t in found if t is not None), None)
        if task is not None:
            ticks.append(row)
            levels.append(100 * task.chance[task.main_metric])
    axes.scatter(levels, ticks, marker="|", s=200, color="black", zorder=3, label="chance")


def _percent(value: float | None) -> str:
    """One decimal, or two below 1% so that tiny chance levels do not read as 0.1 or 0.0."""
    if value is None:
        return ""
    return f"{100 * value:.2f}" if value < 0.01 else f"{100 * value:.1f}"


def _skipped(task: TaskResult) -> str:
    if not task.n_skipped:
        return "0"
    return f"[red]{task.n_skipped}[/red]"
