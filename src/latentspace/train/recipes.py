"""The six training recipes (docs/design.md): which towers train, which are frozen, what is added.

    recipe              vision     text       third tower   text-only pairs
    locked_text         trains     frozen     -             -        (the default; Nomic Embed Vision)
    locked_image        frozen     trains     -             -        (LiT)
    both                trains     trains     -             -        (CLIP-style fine-tuning)
    both+text           trains     trains     -             yes
    three_towers        trains     trains     frozen        -        (Kossen et al. 2023)
    three_towers+text   trains     trains     frozen        yes

A frozen tower never runs inside the training step: its embeddings are computed once into an
on-disk cache and looked up (train/frozen.py). That is why `locked_image` trains on un-augmented
images: an augmented view would have to be re-embedded every step. Which tower feeds which input
of the loss, trained or from a cache, is train/sides.py; the loss itself is `RecipeLoss`, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latentspace.config import RECIPES
from latentspace.train.loss import LogitScale, contrastive_loss


@dataclass(frozen=True)
class RecipeSpec:
    name: str
    train_vision: bool
    train_text: bool
    third_tower: bool
    text_pairs: bool

    @classmethod
    def of(cls, name: str) -> RecipeSpec:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
        return cls(
            name=name,
            train_vision=name != "locked_image",
            train_text=name != "locked_text",
            third_tower=name.startswith("three_towers"),
            text_pairs=name.endswith("+text"),
        )


class RecipeLoss(nn.Module):
    """The loss of one step, for any recipe: image-text InfoNCE, plus for Three Towers the two
    towers against the frozen third (each through its own linear head into the third tower's
    space, with its own temperature, as in the paper), averaged over the three terms."""

    def __init__(self, spec: RecipeSpec, dim: int, third_dim: int | None, init_temperature: float, max_scale: float):
        super().__init__()
        self.spec = spec
        self.scale = LogitScale(init_temperature, max_scale)
        if spec.third_tower:
            assert third_dim is not None
            self.image_head = nn.Linear(dim, third_dim, bias=False)
            self.text_head = nn.Linear(dim, third_dim, bias=False)
            self.third_scale = LogitScale(init_temperature, max_scale)
        if spec.text_pairs:
            self.pair_scale = LogitScale(init_temperature, max_scale)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, third_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        loss = contrastive_loss(image_emb, text_emb, self.scale())
        if self.spec.third_tower:
            scale = self.third_scale()
            loss = (
                loss
                + contrastive_loss(self.image_head(image_emb), third_emb, scale)
                + contrastive_loss(self.text_head(text_emb), third_emb, scale)
            ) / 3
        return loss

    def pairs(self, query_emb: torch.Tensor, positive_emb: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(query_emb, positive_emb, self.pair_scale())
