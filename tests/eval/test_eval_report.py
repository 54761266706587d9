"""The results table and the JSON file."""

from __future__ import annotations

import json

from rich.console import Console

from latentspace.eval.report import print_table, read_json, write_json
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


def test_table_shows_value_chance_counts_and_missing_tasks():
    console = Console(record=True, width=160)
    print_table(_result(), console=console)
    text = console.export_text()
    for expected in ("emoji_noto_all", "acc1", "45.7", "1.0", "1900", "emoji_heldout", "missing", "tiny-vit"):
        assert expected in text


def test_json_round_trips(tmp_path):
    result = _result()
    path = tmp_path / "out" / "results.json"
    write_json(result, path)
    raw = json.loads(path.read_text())
    assert raw["average"] == 0.4567
    assert raw["tasks"][0]["metrics"]["acc5"] == 0.8
    assert raw["tasks"][0]["chance"]["acc1"] == 0.01
    assert read_json(path) == result
