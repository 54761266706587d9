"""Tiny train -> eval -> embed through the public CLI and API, on a miniature emoji corpus."""

import json

import torch
from typer.testing import CliRunner

from latentspace import embed
from latentspace.cli import app
from latentspace.data.emoji import build_emoji_corpus

import fakes
from fakes import TINY_VISION


def test_corpus_train_eval_embed(tmp_path):
    tarballs, integrity = {}, {}
    for style in ("twitter", "google"):
        tarballs[style], integrity[style] = fakes.make_emoji_package(tmp_path / f"{style}.tgz", style)
    openmoji_dir, integrity["openmoji"] = fakes.make_openmoji_dir(tmp_path / "openmoji")
    corpus = build_emoji_corpus(
        tmp_path / "emoji",
        cache_dir=tmp_path / "npm",
        tarballs=tarballs,
        openmoji_dir=openmoji_dir,
        expected_integrity=integrity,
        heldout_fraction=0.25,
        train_styles=["twitter"],  # Noto and OpenMoji unseen: both get evaluation tasks
        eval_style="google",
    )
    shards = "::".join(str(tmp_path / "emoji" / s) for s in corpus["train_shards"])

    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"vision": TINY_VISION, "data": {"train_shards": shards, "workers": 0}}))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(config),
            f"train.output_dir={tmp_path / 'run'}",
            f"train.text_cache_dir={tmp_path / 'cache'}",
            "train.steps=30",
            "train.batch_size=16",
            "optim.warmup_steps=3",
            "optim.lr=3e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    model = tmp_path / "run" / "model"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]

    suite = tmp_path / "emoji" / corpus["eval_suite"]
    result = runner.invoke(
        app,
        [
            "eval",
            str(model),
            "--suite",
            str(suite),
            "--out",
            str(tmp_path / "eval"),
            "--prompt-cache",
            str(tmp_path / "prompts"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (tmp_path / "eval" / "report.md").is_file() and (tmp_path / "eval" / "chart.png").stat().st_size > 1000
    names = {t["name"] for t in report["tasks"]}
    assert {"emoji_noto_all", "emoji_noto_heldout", "emoji_noto_retrieval", "emoji_openmoji_all"} <= names
    assert all(0.0 <= t["metrics"][t["main_metric"]] <= 1.0 for t in report["tasks"])
    assert "chance" in report["tasks"][0]

    image = embed.image([fakes.draw("red circle", style=1)], model=str(model))["embeddings"]
    text = embed.text(["red circle"], model=str(model), task_type="search_query")["embeddings"]
    assert len(image[0]) == len(text[0]) == 384
    assert abs(torch.tensor(image[0]).norm().item() - 1) < 1e-5


def test_cli_errors_are_one_clear_line(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train_shards: x.tar}\ntrain: {stesp: 3}\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "train.stesp: unknown field" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "does not exist" in result.output and "hf-clip:DIR" in result.output
    assert f"'{tmp_path / 'no-model'}'" in result.output  # the path whole, not wrapped at the console width
    result = runner.invoke(app, ["eval", str(tmp_path / "[bold]not-markup")])
    assert "[bold]not-markup" in result.output  # messages are text, never rich markup
