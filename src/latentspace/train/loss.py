"""Symmetric InfoNCE (CLIP's loss) with a learnable temperature.

A caption that occurs twice in a batch needs no special care here: its two text embeddings are
identical, so the two logit columns are too, and the loss equals the one that treats the copies
as shared positives (tests/train/test_loss.py checks this).
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


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
