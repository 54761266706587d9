"""The trainable vision tower: a timm backbone, a pooling choice and a projection into the text space.

timm gives us every architecture by name (ViTs, EVA02, ConvNets); we only add what the method
needs on top: pooling the backbone's tokens to one vector and projecting it to the text model's
width. Convolutional feature maps are treated as tokens, so all three pooling modes work for both.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from latentspace.config import VisionTowerConfig


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


def create_backbone(cfg: VisionTowerConfig) -> nn.Module:
    kwargs = dict(cfg.model_kwargs)
    kwargs.update(num_classes=0)
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    if cfg.init_checkpoint:
        ckpt = Path(cfg.init_checkpoint).expanduser()
        if not ckpt.is_file():
            raise FileNotFoundError(f"vision.init_checkpoint not found: {ckpt}")
        # timm's own pretrained path: loads a local file and adapts position embeddings / patch
        # embeddings to the requested image and patch size. No download happens with `file` set.
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(ckpt), "num_classes": 0})
    if timm.models.is_model(cfg.arch) is False:
        raise ValueError(f"unknown timm architecture {cfg.arch!r} (see timm.list_models())")
    try:
        return timm.create_model(cfg.arch, img_size=cfg.image_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        # Convolutional networks take any input size and have no img_size argument.
        return timm.create_model(cfg.arch, **kwargs)


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        try:
            self.backbone = create_backbone(cfg)
        except RuntimeError as e:
            raise RuntimeError(f"could not build vision tower {cfg.arch!r}: {e}") from e
        width = int(self.backbone.num_features)
        self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        if cfg.pool == "cls" and self.num_prefix_tokens == 0:
            raise ValueError(f"vision.pool=cls needs a model with a class token; {cfg.arch} has none (use mean or attn)")
        self.attn_pool = AttentionPool(width, _heads_for(width)) if cfg.pool == "attn" else None
        self.proj = nn.Linear(width, out_dim, bias=False)
        if cfg.grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(images)
        if feats.ndim == 4:  # (B, C, H, W) from a ConvNet -> (B, H*W, C)
            feats = feats.flatten(2).transpose(1, 2)
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (B, out_dim); the caller normalises."""
        tokens = self.tokens(images)
        if self.cfg.pool == "cls":
            pooled = tokens[:, 0]
        elif self.cfg.pool == "mean":
            pooled = tokens[:, self.num_prefix_tokens :].mean(1)
        else:
            pooled = self.attn_pool(tokens)
        return self.proj(pooled)
