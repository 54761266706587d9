import pytest
import timm
import torch
from safetensors.torch import save_file

from latentspace.config import VisionTowerConfig
from latentspace.models.vision_tower import VisionTower

from fakes import TINY_VISION


@pytest.mark.parametrize("pool", ["cls", "mean", "attn"])
def test_vit_pools_to_text_width(pool):
    tower = VisionTower(VisionTowerConfig(**(TINY_VISION | {"pool": pool})), out_dim=24)
    assert tower(torch.randn(3, 3, 16, 16)).shape == (3, 24)


def test_convnet_backbone_with_mean_pool_and_no_cls():
    cfg = VisionTowerConfig(arch="resnet10t", image_size=32, pool="mean")
    assert VisionTower(cfg, 16)(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="class token"):
        VisionTower(cfg.model_copy(update={"pool": "cls"}), 16)


def test_init_from_local_safetensors_checkpoint(tmp_path):
    kw = TINY_VISION["model_kwargs"]
    donor = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, num_classes=0, **kw)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    tower = VisionTower(VisionTowerConfig(**(TINY_VISION | {"init_checkpoint": str(path)})), 8)
    torch.testing.assert_close(tower.backbone.blocks[0].attn.qkv.weight, donor.blocks[0].attn.qkv.weight)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown timm architecture"):
        VisionTower(VisionTowerConfig(arch="vit_imaginary"), 8)
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        VisionTower(VisionTowerConfig(**(TINY_VISION | {"init_checkpoint": str(tmp_path / "none.pt")})), 8)


def test_the_heads_dropout_is_inverted_dropout():
    from latentspace.models.vision_tower import Dropout

    drop = Dropout(0.5).train()
    x = torch.ones(200, 500)
    y = drop(x)
    kept = y != 0
    assert set(y.unique().tolist()) <= {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert torch.equal(drop.eval()(x), x)  # identity at inference
    assert torch.equal(Dropout(0.0).train()(x), x)
