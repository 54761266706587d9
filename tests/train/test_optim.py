"""The learning-rate schedule and the weight-decay groups, which come from transformers and timm:
checked against the formulas this project used before it took them from the libraries."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentspace.config import VisionTowerConfig
from latentspace.models.vision_tower import VisionTower
from latentspace.train.optim import param_groups, warmup_cosine_schedule

from fakes import TINY_VISION


def previous_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The hand-written LambdaLR factor training used before (the reference for the library's)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def learning_rates(warmup: int, total: int, floor: float, lrs=(1.0, 0.25)) -> list[list[float]]:
    """Each group's learning rate at every optimizer step 0..total-1."""
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)])
    schedule = warmup_cosine_schedule(optimizer, warmup, total, floor)
    seen = []
    for _ in range(total):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize(("warmup", "total", "floor"), [(1, 6, 0.0), (3, 20, 0.1), (30, 700, 0.0), (0, 10, 0.5)])
def test_schedule_shape_linear_warmup_then_cosine_to_the_floor(warmup, total, floor):
    lrs = learning_rates(warmup, total, floor)
    for base, column in zip((1.0, 0.25), zip(*lrs, strict=True), strict=True):  # every group, scaled by its own lr
        factors = [lr / base for lr in column]
        # Warmup: exactly as before, lr/warmup at the first step (none wasted at zero) up to lr.
        assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
        assert factors[:warmup] == pytest.approx([previous_factor(s, warmup, total, floor) for s in range(warmup)])
        # Then a cosine that only goes down and reaches the floor at the last step.
        decay = factors[warmup:]
        assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:], strict=False))
        assert decay[-1] == pytest.approx(floor)
        # transformers' cosine runs one step ahead of the previous formula (which reached the floor
        # one step after the last): the same curve, shifted, so at most one step's decrement apart.
        assert decay == pytest.approx([previous_factor(s + 1, warmup, total, floor) for s in range(warmup, total)])
        step_size = (1 - floor) * math.pi / 2 / max(1, total - warmup)
        assert max(abs(f - previous_factor(s, warmup, total, floor)) for s, f in enumerate(factors)) <= step_size + 1e-9


def previous_groups(module: nn.Module, weight_decay: float) -> tuple[list[str], list[str]]:
    """Names of the parameters the previous hand-written grouping decayed, and those it did not."""
    suffixes = (
        "pos_embed",
        "cls_token",
        "query",
        "reg_token",
        "position_embeddings.weight",
        "token_type_embeddings.weight",
    )
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(suffixes) else decay).append(name)
    return decay, no_decay


@pytest.mark.parametrize("pool", ["mean", "attn"])
def test_weight_decay_groups_are_the_same_as_before(pool):
    tower = VisionTower(VisionTowerConfig(**{**TINY_VISION, "pool": pool}), 16)
    names = {id(p): name for name, p in tower.named_parameters()}
    groups = param_groups(tower, 0.05, lr=1e-3)
    decay, no_decay = previous_groups(tower, 0.05)
    assert [[names[id(p)] for p in g["params"]] for g in groups] == [decay, no_decay]  # decayed group first
    assert [(g["weight_decay"], g["lr"]) for g in groups] == [(0.05, 1e-3), (0.0, 1e-3)]
    assert {"backbone.pos_embed", "backbone.cls_token"} <= set(no_decay)  # 3-d, yet not decayed
    assert ("attn_pool.query" in no_decay) == (pool == "attn")
    assert "lr" not in param_groups(tower, 0.05)[0]  # no override: the optimizer's own lr

    tower.proj.requires_grad_(False)
    frozen = {id(p) for p in tower.proj.parameters()}
    assert not any(id(p) in frozen for g in param_groups(tower, 0.05) for p in g["params"])
