"""Symmetric InfoNCE (CLIP's loss) with a learnable temperature.

One addition: captions that occur twice in a batch (the same concept drawn twice) are treated as
positives of each other, with the target mass split between them, instead of as negatives.
With all captions distinct this is exactly the standard loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LogitScale(nn.Module):
    """exp(s) multiplies cosine similarities; s starts at log(1/T0) and is clamped for stability."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.value.clamp(max=self.max_log).exp()


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
                     caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = scale * img @ txt.T
    if caption_ids is None:
        targets = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)  # symmetric, so it serves both directions
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
