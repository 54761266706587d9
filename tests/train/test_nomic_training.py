"""Training into Nomic's space: nomic-embed-text as the locked text tower, and a vision tower that
starts from a nomic-embed-vision directory (continuing in its space) or from timm weights
(normalised the way those weights were trained)."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.config import VisionTowerConfig
from latentspace.models.load import load
from latentspace.models.model_dir import read_model_config
from latentspace.models.nomic.preprocess import CLIP_MEAN, CLIP_STD
from latentspace.models.nomic.vision_dir import load_nomic_vision
from latentspace.models.vision_tower import VisionTower
from latentspace.train.loop import train

import fakes


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fakes.brace(fakes.write_shards(tmp_path_factory.mktemp("nomic-shards"), n_shards=1, per_shard=16))


def test_nomic_text_as_the_locked_tower(tmp_path, shards, nomic_models):
    text_dir = nomic_models / "nomic-embed-text-v1.5"
    result = train(fakes.tiny_config(tmp_path, shards, f"text.path={text_dir}", steps=2))
    config = read_model_config(result.model_dir)
    text = load(str(text_dir))
    assert config.space == text.identity and config.text.layer_norm is True  # the v1.5 recipe, recorded as used
    model = load(str(result.model_dir))
    assert torch.equal(
        model.embed_texts(["a red circle"], "search_query"), text.embed_texts(["a red circle"], "search_query")
    )
    check = CliRunner().invoke(app, ["check-compat", str(result.model_dir), "--text", str(text_dir)])
    assert check.exit_code == 0 and "compatible" in check.output


def test_vision_continues_from_a_nomic_vision_directory(tmp_path, shards, nomic_models):
    vision_dir = nomic_models / "nomic-embed-vision-v1.5"
    cfg = VisionTowerConfig(arch="nomic-vision", image_size=32, pool="cls", init_checkpoint=str(vision_dir))
    tower = VisionTower(cfg, 32).eval()
    published = load_nomic_vision(vision_dir)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # before any step it *is* the published model: same vectors, same space
        torch.testing.assert_close(F.normalize(tower(pixels), dim=-1), published.embed(pixels), atol=1e-6, rtol=0)

    result = train(
        fakes.tiny_config(
            tmp_path,
            shards,
            f"text.path={nomic_models / 'nomic-embed-text-v1.5'}",
            "vision.arch=nomic-vision",
            "vision.image_size=32",
            "vision.pool=cls",
            f"vision.init_checkpoint={vision_dir}",
            "vision.model_kwargs={}",
            "vision.patch_size=null",
            "optim.lr=1e-4",
            steps=2,
        )
    )
    config = read_model_config(result.model_dir)
    assert config.preprocess.mean == CLIP_MEAN and config.preprocess.std == CLIP_STD  # as Nomic preprocesses
    assert config.vision.init_checkpoint is None and "nomic_config" in config.vision.model_kwargs
    moved = shutil.copytree(result.model_dir, tmp_path / "elsewhere" / "model")  # no pointer to the start
    model = load(str(moved))
    assert model.identity == load(str(vision_dir)).identity
    assert model.embed_images([fakes.draw("red circle")]).shape == (1, 32)


def test_a_pretrained_timm_start_takes_its_own_normalisation(tmp_path):
    checkpoint = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(checkpoint))
    tower = VisionTower(VisionTowerConfig(arch="resnet10t", image_size=32, init_checkpoint=str(checkpoint)), 16)
    mean, std = tower.normalisation()
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert VisionTower(VisionTowerConfig(arch="resnet10t", image_size=32), 16).normalisation() is None  # scratch: 0.5


def test_nomic_vision_refuses_settings_it_cannot_honour(nomic_models):
    vision_dir = str(nomic_models / "nomic-embed-vision-v1.5")
    with pytest.raises(ValueError, match="vision.image_size=32"):
        VisionTower(VisionTowerConfig(arch="nomic-vision", image_size=224, pool="cls", init_checkpoint=vision_dir), 32)
    with pytest.raises(ValueError, match="vision.pool=cls"):
        VisionTower(VisionTowerConfig(arch="nomic-vision", image_size=32, pool="mean", init_checkpoint=vision_dir), 32)
    with pytest.raises(ValueError, match="needs vision.init_checkpoint"):
        VisionTower(VisionTowerConfig(arch="nomic-vision", image_size=32, pool="cls"), 32)
