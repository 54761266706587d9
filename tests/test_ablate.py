from rich.console import Console

from latentspace.ablate import AblationRow, _write, print_ablation, run_ablation

import pytest


def _row(recipe, top1=0.2):
    return AblationRow(recipe, top1, 0.1, 0.45, 0.45, recipe != "locked_text", 10.0)


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
