"""Optimizer parameter groups shared by every recipe."""

from __future__ import annotations

from torch import nn

# Parameters that are embeddings or tokens rather than weights: no weight decay, like 1-d ones.
_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "query", "reg_token", "position_embeddings.weight",
                      "token_type_embeddings.weight")


def param_groups(module: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """AdamW groups for `module`'s trainable parameters: no weight decay on biases, norms,
    embeddings and tokens. `lr` overrides the optimizer's learning rate for this module."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES) else decay).append(p)
    extra = {} if lr is None else {"lr": lr}
    return [g for g in ({"params": decay, "weight_decay": weight_decay, **extra},
                        {"params": no_decay, "weight_decay": 0.0, **extra}) if g["params"]]
