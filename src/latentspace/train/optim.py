"""Optimizer parameter groups and the learning-rate schedule shared by every recipe: both from
the libraries that already define them (timm, transformers), set up the way training needs."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

# Parameters that are embeddings or tokens rather than weights: no weight decay, like 1-d ones
# (biases, norms), which timm leaves out by itself. Patterns match whole parameter names.
_NO_DECAY = (
    "*pos_embed",
    "*cls_token",
    "*query",
    "*reg_token",
    "*position_embeddings.weight",
    "*token_type_embeddings.weight",
)


def param_groups(module: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """AdamW groups for `module`'s trainable parameters: no weight decay on biases, norms,
    embeddings and tokens. `lr` overrides the optimizer's learning rate for this module."""
    groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=_NO_DECAY)
    # The decayed group first, as before timm built them: checkpoints written before optimizer
    # state was keyed by parameter name map their state onto groups by position.
    groups.sort(key=lambda group: group["weight_decay"] == 0.0)
    return [{**group, "lr": lr} if lr is not None else group for group in groups]


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's learning rate rises linearly over `warmup` steps (lr/warmup at the first step,
    so no step is wasted at zero), then follows a cosine down to `floor` x its own lr, reached at
    the last of `total` steps. A LambdaLR, so its state saves and resumes with the checkpoint."""
    return get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer, num_warmup_steps=warmup, num_training_steps=total, min_lr_rate=floor
    )
