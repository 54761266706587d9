"""train/sharding.py in one process: which blocks FSDP wraps, and the unsharded paths of the
state-dict and clipping helpers (the sharded ones run under gloo in test_distributed.py)."""

from __future__ import annotations

import torch
from torch import nn

from latentspace.config import VisionTowerConfig
from latentspace.models.vision_tower import VisionTower
from latentspace.train.sharding import (
    clip_grad_norm,
    full_state_dict,
    is_sharded,
    load_optimizer_state_dict,
    optimizer_state_dict,
    repeated_blocks,
)

from fakes import TINY_VISION


def test_blocks_of_a_timm_vit_and_a_bert_are_found(text_tower):
    vision = VisionTower(
        VisionTowerConfig(**{**TINY_VISION, "model_kwargs": {**TINY_VISION["model_kwargs"], "depth": 3}}),
        text_tower.dim,
    )
    blocks = repeated_blocks(vision)
    assert len(blocks) == 3 and all(type(b).__name__ == "Block" for b in blocks)
    text_tower.set_trainable(True)
    try:
        layers = repeated_blocks(text_tower)
        assert len(layers) == 6 and len({type(layer) for layer in layers}) == 1  # MiniLM's six layers
    finally:
        text_tower.set_trainable(False)
    assert repeated_blocks(text_tower) == []  # frozen: nothing to shard


def test_mixed_containers_are_searched_not_wrapped():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]))
    assert repeated_blocks(net) == list(net[2])


def test_unsharded_helpers_match_torch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model(torch.randn(8, 4)).pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = clip_grad_norm(model.parameters(), 0.01)
    assert abs(norm - torch.cat([g.flatten() for g in grads]).norm().item()) < 1e-5
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert abs(clipped - 0.01) < 1e-6
    assert not is_sharded(model) and full_state_dict(model).keys() == model.state_dict().keys()

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    optimizer.step()
    saved = optimizer_state_dict({"net": model}, optimizer)
    assert sorted(saved["state"]) == ["net.0.bias", "net.0.weight", "net.1.bias", "net.1.weight"]
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_optimizer_state_dict({"net": model}, fresh, saved)
    for before, after in zip(optimizer.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        torch.testing.assert_close(before["exp_avg_sq"], after["exp_avg_sq"], rtol=0, atol=0)
