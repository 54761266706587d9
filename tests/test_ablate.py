import json
from pathlib import Path

import pytest
from rich.console import Console

from latentspace.ablate import AblationRow, SeedRun, _write, print_ablation, recipe_overrides, run_ablation


def _row(recipe, top1=0.2, seeds=(0,), spread=0.0):
    """A recipe's runs: top-1 on all concepts `top1`, then `spread` higher per seed."""
    runs = [SeedRun(s, top1 + i * spread, 0.1, 0.45, recipe != "locked_text", 10.0) for i, s in enumerate(seeds)]
    return AblationRow(recipe, 0.45, runs)


def test_rows_from_separate_runs_add_up_to_one_table(tmp_path):
    _write([_row("both")], tmp_path, steps=5, batch_size=8)
    _write([_row("locked_text"), _row("both", top1=0.3)], tmp_path, steps=5, batch_size=8)
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["`both`", "`locked_text`"]  # recipe order
    assert "30.0" in table[2]  # the rerun replaced the old row
    _write([_row("locked_image")], tmp_path, steps=6, batch_size=8)  # another budget starts over
    assert len((tmp_path / "ablation.md").read_text().splitlines()) == 3
    print_ablation([_row("both")], Console(record=True))


def test_unknown_recipes_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe"):
        run_ablation(tmp_path, steps=1, batch_size=2, recipes=["four_towers"], text_lr=1e-5, console=Console())
    assert not any(tmp_path.iterdir())


def test_two_seeds_give_mean_and_standard_deviation(tmp_path):
    rows = [_row("both", top1=0.2, seeds=(0, 1), spread=0.02), _row("locked_text", top1=0.3, seeds=(0, 1))]
    _write(rows, tmp_path, steps=5, batch_size=8)
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert "21.0 ± 1.4" in table[2] and table[2].endswith("| 2 |")  # mean of 20 and 22, sample sd 1.41
    assert "30.0 ± 0.0" in table[3]
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["seeds"] == [0, 1]
    both = saved["rows"][0]
    assert [r["unseen_all_top1"] for r in both["runs"]] == pytest.approx([0.2, 0.22])
    assert both["mean"]["unseen_all_top1"] == pytest.approx(0.21)
    assert both["std"]["unseen_all_top1"] == pytest.approx(0.01414, abs=1e-4)
    _write([_row("both")], tmp_path, steps=5, batch_size=8)  # one seed is another protocol: a new table
    assert len((tmp_path / "ablation.md").read_text().splitlines()) == 3
    console = Console(record=True, width=200)
    print_ablation(rows, console)
    printed = console.export_text()
    assert "mean ± sd over 2 seeds" in printed and "21.0 ± 1.4%" in printed


def test_each_seed_is_its_own_run(tmp_path):
    runs = [
        recipe_overrides(
            tmp_path,
            "both+text",
            seed,
            steps=5,
            batch_size=8,
            start=Path("start"),
            text_lr=1e-5,
            pairs=Path("pairs.jsonl"),
        )
        for seed in (0, 1)
    ]
    assert "train.seed=0" in runs[0] and "train.seed=1" in runs[1]
    assert f"train.output_dir={tmp_path / 'ablation' / 'both_plus_text' / 'seed1'}" in runs[1]
    assert [o for o in runs[0] if "seed" not in o] == [o for o in runs[1] if "seed" not in o]  # all else equal
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        run_ablation(tmp_path, steps=1, batch_size=2, recipes=["both"], text_lr=1e-5, seeds=0, console=Console())
