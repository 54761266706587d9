"""The trainable vision tower: a backbone, a pooling choice and a projection into the text space.

The backbone is any timm architecture by name (ViTs, EVA02, ConvNets) or Nomic's published vision
model, behind one interface (models/backbone.py); we only add what the method needs on top:
pooling the backbone's tokens to one vector and projecting it to the text model's width.
Convolutional feature maps are treated as tokens, so all three pooling modes work for both.
"""

from __future__ import annotations

import torch
from torch import nn

from latentspace.config import VisionTowerConfig
from latentspace.models.backbone import Backbone, build_backbone


class AttentionPool(nn.Module):
    """One learned query attends over all tokens (as in CoCa / SigLIP's MAP head)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(q, tokens, tokens, need_weights=False)
        return self.norm(out[:, 0])


def _heads_for(width: int) -> int:
    for h in (8, 6, 4, 3, 2):
        if width % h == 0:
            return h
    return 1


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        try:
            self.adapter: Backbone = build_backbone(cfg)
        except RuntimeError as e:
            raise RuntimeError(f"could not build vision tower {cfg.arch!r}: {e}") from e
        self.backbone = self.adapter.module  # registered here: saved weights are named backbone.*
        width = self.adapter.width
        if cfg.pool == "cls" and self.adapter.prefix_tokens == 0:
            raise ValueError(
                f"vision.pool=cls needs a model with a class token; {cfg.arch} has none (use mean or attn)"
            )
        self.attn_pool = AttentionPool(width, _heads_for(width)) if cfg.pool == "attn" else None
        self.out_dim = out_dim
        self.proj = nn.Linear(width, out_dim, bias=False) if not cfg.head_hidden else MLPHead(width, out_dim, cfg)
        if cfg.grad_checkpointing:
            self.adapter.set_grad_checkpointing()
        if isinstance(self.proj, MLPHead):
            pass  # PyTorch's default initialisation
        elif self.adapter.in_target_space and width == out_dim:
            nn.init.eye_(self.proj.weight)  # the backbone's output already is the embedding
        else:
            nn.init.normal_(self.proj.weight, std=width**-0.5)

    def saved_config(self) -> VisionTowerConfig:
        """The config a model directory records: enough to rebuild this network, with no pointer
        to where its starting weights came from (the directory has the weights)."""
        update = {"init_checkpoint": None, "init_from": None, "model_kwargs": self.adapter.saved_model_kwargs()}
        return self.cfg.model_copy(update=update)

    def init_source(self) -> dict | None:
        """What the backbone's weights started from, for the model directory's info: file, sha256,
        and for a package its name, version and licence; None from scratch or from Nomic's."""
        return self.adapter.start.describe() if self.adapter.start is not None else None

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """(mean, std) the backbone's starting weights were trained with, if it has pretrained ones."""
        return self.adapter.normalisation()

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter.tokens(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (B, width): what the head projects, and what
        `freeze_backbone` training caches."""
        tokens = self.tokens(images)
        if self.cfg.pool == "cls":
            return tokens[:, 0]
        if self.cfg.pool == "mean":
            return tokens[:, self.adapter.prefix_tokens :].mean(1)
        return self.attn_pool(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (B, out_dim); the caller normalises."""
        return self.proj(self.features(images))


class Dropout(nn.Module):
    """Inverted dropout, as `nn.Dropout`, with its mask drawn from uniform floats on the CPU:
    PyTorch's CPU dropout draws a Bernoulli sample element by element, about three times slower
    (4.9 ms against 1.7 ms for a 256 x 1280 batch on a 2-core CPU), which made the head's two
    dropouts a third of a frozen-backbone training step. On GPUs PyTorch's own is used."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.is_cuda:
            return nn.functional.dropout(x, self.p, training=True)
        # uniform r in [0, 1): floor(r + 1 - p) is 1 with probability 1 - p, else 0; all in place
        return x * torch.rand_like(x).add_(1 - self.p).floor_().mul_(1 / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLPHead(nn.Module):
    """Pooled features -> text space through one hidden layer. The LayerNorm first puts features of
    any scale (a frozen pretrained backbone's, say) on one footing."""

    def __init__(self, width: int, out_dim: int, cfg: VisionTowerConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            Dropout(cfg.head_dropout),
            nn.Linear(width, cfg.head_hidden),
            nn.GELU(),
            Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PooledBackbone(nn.Module):
    """A vision tower's backbone and pooling without its head, as a module of its own: what a
    frozen-backbone run embeds once into its feature cache. Only the backbone is registered, so
    freezing this module leaves the head trainable."""

    def __init__(self, tower: VisionTower):
        super().__init__()
        if tower.attn_pool is not None:
            raise ValueError("vision.freeze_backbone needs pool mean or cls: an attention pool must train")
        self.backbone = tower.backbone
        self._tower = (tower,)  # a tuple, so the tower (and its head) is not a submodule

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._tower[0].features(images)
