"""The networks a vision tower stands on, behind one small interface: `Backbone`.

A vision tower (models/vision_tower.py) pools a backbone's tokens and projects them into the text
space; everything it needs to know about the backbone is here: its network, the width and number
of prefix tokens of its output, how to run it on images, what its weights started from, what
normalisation they were trained with, and what a saved config must record to rebuild it.

Two backbones implement it: `TimmBackbone`, any timm architecture by name (ViTs, EVA02,
ConvNets), and Nomic's published vision model (models/nomic/backbone.py), picked by
`vision.arch: nomic-vision`.
"""

from __future__ import annotations

from typing import Any, Protocol

import timm
import torch
from torch import nn

from latentspace.config import NOMIC_VISION_ARCH, VisionTowerConfig
from latentspace.models.pretrained import StartingWeights, create_timm_backbone


class Backbone(Protocol):
    """What a vision tower needs of its backbone network."""

    # The network. The tower registers it as its `backbone` submodule, so saved weights are named
    # `backbone.<the network's own names>` whichever kind it is.
    module: nn.Module
    width: int  # features per token
    prefix_tokens: int  # tokens before the patch tokens (a class token, registers); `pool: mean` skips them
    # What the weights started from (file, sha256, package, ...); None from scratch or from Nomic's.
    start: StartingWeights | None
    # True when its tokens already are embeddings in the tower's target space: a projection of the
    # same width then starts as the identity instead of at random.
    in_target_space: bool

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, tokens, width)."""
        ...

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """(mean, std) its starting weights were trained with; None when it has none."""
        ...

    def saved_model_kwargs(self) -> dict[str, Any]:
        """`vision.model_kwargs` for a saved config: with the rest of the config, enough to build
        this network again without its starting weights (the model directory holds them)."""
        ...

    def set_grad_checkpointing(self) -> None:
        """Recompute activations in the backward pass (or a ValueError when it cannot)."""
        ...


def build_backbone(cfg: VisionTowerConfig) -> Backbone:
    """The backbone `cfg.arch` names."""
    if cfg.arch == NOMIC_VISION_ARCH:
        from latentspace.models.nomic.backbone import NomicBackbone

        return NomicBackbone(cfg)
    return TimmBackbone(cfg)


def create_backbone(cfg: VisionTowerConfig) -> nn.Module:
    """Just the network of `build_backbone(cfg)`."""
    return build_backbone(cfg).module


class TimmBackbone:
    """A timm architecture, from scratch or from starting weights (models/pretrained.py: a file or
    an installed package's, heads dropped, fitted and loaded through timm, which adapts position /
    patch embeddings to the image and patch size). `vision.model_kwargs` go to timm.create_model.
    A ConvNet's (B, C, H, W) feature map is read as H*W tokens, so every pooling works for it."""

    in_target_space = False

    def __init__(self, cfg: VisionTowerConfig):
        kwargs = dict(cfg.model_kwargs)
        if cfg.patch_size is not None:
            kwargs["patch_size"] = cfg.patch_size
        if timm.models.is_model(cfg.arch) is False:
            raise ValueError(f"unknown timm architecture {cfg.arch!r} (see timm.list_models())")
        self.cfg = cfg
        self.module, self.start = create_timm_backbone(
            cfg.arch, cfg.init_checkpoint, img_size=cfg.image_size, what="vision.init_checkpoint", **kwargs
        )
        # ConvNets run in channels_last (NHWC): oneDNN's convolutions, depthwise ones above all,
        # are about twice as fast in it on CPUs (EfficientNet-Lite0 at 160 px, batch 32: 178 vs 83
        # images/s). A ViT has one convolution (its patch embedding) and gains nothing.
        self.channels_last = sum(isinstance(m, nn.Conv2d) for m in self.module.modules()) > 1
        if self.channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.width = int(self.module.num_features)
        self.prefix_tokens = int(getattr(self.module, "num_prefix_tokens", 0))

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.module.forward_features(images)
        if feats.ndim == 4:  # (B, C, H, W) from a ConvNet -> (B, H*W, C)
            feats = feats.flatten(2).transpose(1, 2)
        return feats

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        pretrained = getattr(self.module, "pretrained_cfg", None) or {}
        if self.cfg.init_checkpoint and "mean" in pretrained and "std" in pretrained:
            return tuple(float(x) for x in pretrained["mean"]), tuple(float(x) for x in pretrained["std"])
        return None

    def saved_model_kwargs(self) -> dict[str, Any]:
        return self.cfg.model_kwargs

    def set_grad_checkpointing(self) -> None:
        self.module.set_grad_checkpointing(True)
