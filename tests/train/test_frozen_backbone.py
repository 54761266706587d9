"""`vision.freeze_backbone`: only the head trains, on backbone features cached once per image."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from latentspace import embed
from latentspace.models.paired import PairedModel
from latentspace.train.loop import Trainer, train

import fakes
from fakes import TINY_VISION, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fakes.brace(fakes.write_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=12, corrupt=1))


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A 'pretrained' classification checkpoint of the tiny backbone (random weights, head included)."""
    kw = TINY_VISION["model_kwargs"]
    donor = timm.create_model(TINY_VISION["arch"], img_size=16, patch_size=8, num_classes=5, **kw)
    path = tmp_path_factory.mktemp("donor") / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    return path


def _frozen(tmp_path, shards, backbone_file, *extra, steps=4):
    return tiny_config(
        tmp_path,
        shards,
        f"vision.init_checkpoint={backbone_file}",
        "vision.freeze_backbone=true",
        "vision.head_hidden=16",
        "vision.head_dropout=0.1",
        *extra,
        steps=steps,
    )


def test_only_the_head_trains_and_the_saved_model_runs_whole(tmp_path, shards, backbone_file):
    result = train(_frozen(tmp_path, shards, backbone_file))
    weights = load_file(str(result.model_dir / "model.safetensors"))
    donor = load_file(str(backbone_file))
    backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, donor[k]) for k, v in backbone.items())  # untouched
    caches = list((tmp_path / "images").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("backbone-features-")
    # The saved model is backbone + head: an image embeds through both, as in the cache + head.
    model = PairedModel.load(result.model_dir)
    image = fakes.draw(fakes.CONCEPTS[0])
    served = torch.tensor(
        embed.image([image], model=str(result.model_dir), runtime="torch", precision="fp32")["embeddings"]
    )
    assert torch.allclose(served, model.embed_images([image]), atol=1e-5)
    assert not torch.allclose(served, torch.zeros_like(served))


def test_a_killed_frozen_backbone_run_resumes_to_the_same_head(tmp_path, shards, backbone_file):
    whole = train(_frozen(tmp_path / "whole", shards, backbone_file))
    interrupted = Trainer(_frozen(tmp_path / "split", shards, backbone_file))
    batches = iter(interrupted.batches())
    for _ in range(2):  # two steps, a checkpoint, then the process "dies"
        interrupted.step(next(batches))
    interrupted.save()
    trainer = Trainer(_frozen(tmp_path / "split", shards, backbone_file))
    assert trainer.resumed_from == 2
    resumed = trainer.run()
    a = load_file(str(whole.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_frozen_backbone_needs_pretrained_weights_and_a_fixed_pool(tmp_path, shards, backbone_file):
    with pytest.raises(ValueError, match="must start from pretrained weights"):
        train(tiny_config(tmp_path / "a", shards, "vision.freeze_backbone=true", steps=2))
    with pytest.raises(ValueError, match="needs pool mean or cls"):
        train(_frozen(tmp_path / "b", shards, backbone_file, "vision.pool=attn", steps=2))


def test_the_head_trains_from_features_in_memory_and_the_cache_says_its_runtime(
    tmp_path, shards, backbone_file, monkeypatch
):
    """No shard is streamed while the head trains: every batch comes from the table in memory, a
    function of (seed, step). The frozen forward that filled the cache ran on the runtime layer's
    choice, within cosine 0.999 of PyTorch fp32."""
    import torch.nn.functional as F

    from latentspace.data.images import decode_image
    from latentspace.data.shards import ErrorCounter, expand_urls, iter_raw_samples, sample_id
    from latentspace.data.transforms import eval_transform
    from latentspace.models.vision_tower import PooledBackbone
    from latentspace.runtime import CANDIDATES
    from latentspace.train import batches

    trainer = Trainer(_frozen(tmp_path, shards, backbone_file))
    table = trainer.sides.table
    assert table is not None and len(table) + table.skipped == 24 and table.skipped >= 1  # the corrupt ones

    def no_stream(*args, **kwargs):
        raise AssertionError("the shards were streamed")

    monkeypatch.setattr(batches, "ImageTextStream", no_stream)
    first, again = table.batch(3, 8), table.batch(3, 8)
    assert first["keys"] == again["keys"] and torch.equal(first["features"], again["features"])
    halves = [table.batch(3, 8, rank, 2) for rank in (0, 1)]
    assert halves[0]["keys"] + halves[1]["keys"] == first["keys"]  # two processes: one global batch
    n = len(table) - len(table) % 2
    epoch = [k for step in range(n // 2) for k in table.batch(step, 2)["keys"]]
    assert len(set(epoch)) == n  # an epoch visits each sample once
    assert trainer.run().steps == 4

    assert trainer.sides.cache_runtimes["frozen backbone"] in {f"{r}-{p}" for r, p in CANDIDATES}
    images = {
        sample_id(s): decode_image(s["png"], name="x")
        for s in iter_raw_samples(expand_urls(shards), ErrorCounter())
        if sample_id(s) in table.keys[:3]
    }
    pixels = torch.stack([eval_transform(trainer.sides.preprocess)(images[k]) for k in table.keys[:3]])
    with torch.inference_mode():
        exact = PooledBackbone(trainer.sides.vision).eval()(pixels)
    features = trainer.sides.caches["frozen backbone"]
    assert F.cosine_similarity(features.lookup(table.keys[:3]), exact).min() >= 0.999


@pytest.mark.parametrize("caption", ["name", "random"])
def test_the_table_gives_the_batches_the_stream_would(tmp_path, shards, backbone_file, caption):
    """Same samples, same order across epochs, same captions drawn: a frozen-backbone run trains on
    what it would have streamed from the shards with one reader."""
    from torch.utils.data import DataLoader

    from latentspace.data.shards import ImageTextStream
    from latentspace.train.batches import no_pixels

    trainer = Trainer(_frozen(tmp_path, shards, backbone_file, f"data.caption={caption}"))
    cfg, table, features = trainer.cfg, trainer.sides.table, trainer.sides.caches["frozen backbone"]
    stream = ImageTextStream(
        urls=trainer.urls,
        transform=no_pixels,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        caption_mode=caption,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )
    streamed = list(itertools.islice(iter(DataLoader(stream, batch_size=None)), 9))  # past three epochs
    for step, batch in enumerate(streamed):
        ours = table.batch(step, cfg.train.batch_size)
        assert ours["keys"] == batch["keys"] and ours["captions"] == batch["captions"], step
        assert torch.equal(ours["features"], features.lookup(batch["keys"]))
