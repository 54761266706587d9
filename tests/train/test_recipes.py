"""Every recipe trains end to end on tiny data; bad set-ups fail before any step runs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentspace import embed
from latentspace.config import ConfigError
from latentspace.models.model_dir import read_model_config
from latentspace.models.paired import PairedModel
from latentspace.train.loop import Trainer, train
from latentspace.train.recipes import RecipeSpec

import fakes
from fakes import tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fakes.brace(fakes.write_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=12, corrupt=1))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, shards):
    """A trained locked-text model: the 'pretrained' vision tower and third tower of the others."""
    out = tmp_path_factory.mktemp("pretrained")
    return train(tiny_config(out, shards, steps=3)).model_dir


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    lines = [
        json.dumps({"query": f"what colour is a {c} {s}?", "positive": f"a {s} that is {c}"})
        for c in fakes.COLOURS
        for s in fakes.SHAPES
    ]
    lines += [json.dumps(["a list pair", "works too"]), "not json", json.dumps({"query": "no positive"})]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_recipe_table():
    assert RecipeSpec.of("locked_text") == RecipeSpec("locked_text", True, False, False, False)
    assert RecipeSpec.of("locked_image") == RecipeSpec("locked_image", False, True, False, False)
    assert RecipeSpec.of("three_towers+text") == RecipeSpec("three_towers+text", True, True, True, True)
    with pytest.raises(ValueError, match="unknown recipe"):
        RecipeSpec.of("four_towers")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["recipe=both+text"], "data.text_pairs.path"),
        (["recipe=three_towers"], "third tower"),
        (["recipe=both", "data.text_pairs.path=x.jsonl"], "does not use it"),
        (["recipe=locked_text", "three_towers.model_dir=x"], "has no third tower"),
        (["recipe=three_towers", "three_towers.arch=resnet10t"], "local checkpoint"),
    ],
)
def test_inconsistent_recipe_configs_are_refused(tmp_path, shards, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, shards, *overrides)


def test_bad_inputs_fail_before_any_step(tmp_path, shards):
    with pytest.raises(ValueError, match="must start from pretrained"):
        Trainer(tiny_config(tmp_path / "a", shards, "recipe=locked_image"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    with pytest.raises(ValueError, match="0 usable text pair"):
        Trainer(tiny_config(tmp_path / "b", shards, "recipe=both+text", f"data.text_pairs.path={empty}"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not load the third tower"):
        Trainer(
            tiny_config(
                tmp_path / "c",
                shards,
                "recipe=three_towers",
                "three_towers.arch=resnet10t",
                f"three_towers.checkpoint={broken}",
            )
        )
    for step_dir in ("a", "b", "c"):
        assert not (tmp_path / step_dir / "run" / "checkpoint.pt").exists()


def _vision_weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def test_both_trains_the_text_tower_into_a_new_space(tmp_path, shards, pretrained, text_tower):
    result = train(
        tiny_config(tmp_path, shards, "recipe=both", f"vision.init_from={pretrained}", "optim.text_lr=1e-4", steps=3)
    )
    config = read_model_config(result.model_dir)
    assert config.text.path == "all-MiniLM-L6-v2-both"  # saved inside the model directory
    assert config.space.fingerprint != text_tower.space.fingerprint
    assert config.info["recipe"] == "both"
    model = PairedModel.load(result.model_dir)  # loads and re-derives the recorded space
    tuned = embed.text(["a red circle"], model=str(result.model_dir))
    original = embed.text(["a red circle"], model="builtin:all-MiniLM-L6-v2")
    assert tuned["space"] == model.space != original["space"]
    assert tuned["embeddings"] != original["embeddings"]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_vision_weights(result.model_dir).values(), _vision_weights(pretrained).values())
    )


def test_locked_image_keeps_the_vision_tower_and_caches_it(tmp_path, shards, pretrained):
    result = train(tiny_config(tmp_path, shards, "recipe=locked_image", f"vision.init_from={pretrained}", steps=3))
    for name, tensor in _vision_weights(pretrained).items():
        assert torch.equal(tensor, _vision_weights(result.model_dir)[name]), name
    caches = list((tmp_path / "images").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("frozen-image-")


def test_three_towers_plus_text_with_a_saved_model_as_third_tower(tmp_path, shards, pretrained, pairs_file):
    cfg = tiny_config(
        tmp_path,
        shards,
        "recipe=three_towers+text",
        f"three_towers.model_dir={pretrained}",
        f"three_towers.cache_dir={tmp_path / 'third'}",
        f"data.text_pairs.path={pairs_file}",
        "data.text_pairs.ratio=0.5",
        steps=4,
    )
    trainer = Trainer(cfg)
    pairs = trainer.sides.pairs
    assert pairs is not None and len(pairs) == 13 and pairs.skipped == 2
    assert [pairs.is_text_step(s) for s in range(4)] == [False, True, False, True]
    result = trainer.run()
    assert result.steps == 4
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert {"loss.image_head.weight", "loss.text_head.weight", "loss.third_scale.value", "loss.pair_scale.value"} <= {
        f"loss.{k}" for k in state["loss"]
    }
    assert "text" in state
    assert len(list((tmp_path / "third").iterdir())) == 1


def test_a_trainable_text_tower_resumes_exactly(tmp_path, shards, pairs_file):
    overrides = ("recipe=both+text", f"data.text_pairs.path={pairs_file}", "optim.text_lr=1e-4")
    reference = train(tiny_config(tmp_path / "ref", shards, *overrides, steps=4))
    interrupted = Trainer(tiny_config(tmp_path / "cut", shards, *overrides, steps=4))
    batches = iter(interrupted.batches())
    for _ in range(2):  # two steps, a checkpoint, then the process "dies"
        interrupted.step(next(batches))
    interrupted.save()
    resumed = Trainer(tiny_config(tmp_path / "cut", shards, *overrides, steps=4))
    assert resumed.resumed_from == 2
    result = resumed.run()
    folder = "all-MiniLM-L6-v2-both+text"
    ref_text = load_file(str(reference.model_dir / folder / "model.safetensors"))
    cut_text = load_file(str(result.model_dir / folder / "model.safetensors"))
    for name in ref_text:
        assert torch.equal(ref_text[name], cut_text[name]), name
    assert all(
        torch.equal(a, b)
        for a, b in zip(_vision_weights(reference.model_dir).values(), _vision_weights(result.model_dir).values())
    )
