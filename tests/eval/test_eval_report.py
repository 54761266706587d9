"""The results table, the JSON file, and the side-by-side Markdown table and chart."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.console import Console

from latentspace.eval.report import print_table, write_chart, write_json, write_markdown
from latentspace.eval.runner import SuiteResult, TaskResult


def _result() -> SuiteResult:
    task = TaskResult(
        name="emoji_noto_all",
        type="zeroshot_classification",
        main_metric="acc1",
        metrics={"acc1": 0.4567, "acc5": 0.8, "mean_per_class_recall": 0.41},
        chance={"acc1": 0.01, "acc5": 0.05, "mean_per_class_recall": 0.01},
        n_samples=1900,
        n_skipped=3,
        seconds=12.5,
        skipped_reasons={"undecodable image": 3},
    )
    return SuiteResult("tiny-vit", "all-MiniLM-L6-v2@abc", "emoji", tasks=[task], missing=["emoji_heldout"])


def _table_rows(text: str) -> list[dict[str, str]]:
    """The rows of a printed table, each {column name: cell text}, read by the box's separators."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    columns = [cell.strip() for cell in header.strip("┃").split("┃")]
    cells = ([cell.strip() for cell in line.strip("│").split("│")] for line in lines if line.startswith("│"))
    return [dict(zip(columns, row, strict=True)) for row in cells]


def test_table_shows_value_chance_counts_and_missing_tasks():
    console = Console(record=True, width=160)
    print_table(_result(), console=console)
    text = console.export_text()
    assert "tiny-vit" in text.splitlines()[0]  # the title names the model
    task, missing, average = _table_rows(text)
    # values in %: acc1 0.4567 and chance 0.01, each in its own column
    assert task == {
        "task": "emoji_noto_all",
        "metric": "acc1",
        "value": "45.7",
        "chance": "1.0",
        "n": "1900",
        "skipped": "3",
        "s": "12.5",
    }
    assert missing["task"] == "emoji_heldout" and missing["value"] == "missing" and missing["n"] == ""
    assert average["task"] == "average, incomplete (1 of 2 tasks)" and average["value"] == "45.7"


def test_json_holds_the_result_and_its_summary(tmp_path):
    result = _result()
    path = tmp_path / "out" / "results.json"
    write_json(result, path)
    raw = json.loads(path.read_text())
    assert raw["average"] == 0.4567
    assert raw["complete"] is False
    assert raw["tasks"][0]["metrics"]["acc5"] == 0.8
    assert raw["tasks"][0]["chance"]["acc1"] == 0.01
    assert _holds(raw, result)


def _holds(raw: dict, result: SuiteResult) -> bool:
    """The saved JSON has every field of the result, as it was."""
    return {key: raw[key] for key in asdict(result)} == json.loads(json.dumps(asdict(result)))


def _task(name: str, value: float, chance: float = 0.1) -> TaskResult:
    return TaskResult(name, "zeroshot_classification", "acc1", {"acc1": value}, {"acc1": chance}, 10, 0, 1.0)


def _two_models() -> list[SuiteResult]:
    groups = {"pair": ["cats", "dogs"]}
    full_tasks = [_task("cats", 0.5), _task("dogs", 0.25), _task("birds", 0.75)]
    full = SuiteResult("model-a", "s", "mini", full_tasks, [], groups)
    partial = SuiteResult("model-b", "s", "mini", [_task("cats", 0.9), _task("birds", 0.3)], ["dogs"], groups)
    return [full, partial]


def test_group_averages_and_json_with_groups(tmp_path):
    full, partial = _two_models()
    assert full.complete and full.group_averages() == {"pair": 0.375}
    assert not partial.complete and partial.group_averages() == {"pair": None}
    write_json(partial, tmp_path / "r.json")
    raw = json.loads((tmp_path / "r.json").read_text())
    assert raw["group_averages"] == {"pair": None}
    assert _holds(raw, partial)


def test_markdown_has_a_column_per_model_and_marks_missing(tmp_path):
    path = tmp_path / "report" / "table.md"
    write_markdown(_two_models(), path)
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert header == "| task | metric | chance | model-a | model-b |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert rows["dogs"] == "| dogs | acc1 | 10.0 | 25.0 | — |"
    assert rows["cats"] == "| cats | acc1 | 10.0 | 50.0 | 90.0 |"
    assert rows["**pair**"].endswith("| 37.5 | — |")
    assert rows["**average**"].endswith("| **50.0** | 60.0 (incomplete: 2 of 3) |")


def test_chart_is_a_png(tmp_path):
    path = tmp_path / "chart.png"
    write_chart(_two_models(), path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1024
