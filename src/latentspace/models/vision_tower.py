"""The trainable vision tower: a timm backbone, a pooling choice and a projection into the text space.

timm gives us every architecture by name (ViTs, EVA02, ConvNets); we only add what the method
needs on top: pooling the backbone's tokens to one vector and projecting it to the text model's
width. Convolutional feature maps are treated as tokens, so all three pooling modes work for both.

`arch: nomic-vision` starts from a published nomic-embed-vision directory instead: its tokens
already carry Nomic's attention-pooled vector on every position and live in nomic-embed-text's
space, so `pool: cls` takes token 0 and the projection starts as the identity. Training then
continues in that space (with nomic-embed-text as the locked text tower).
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from torch import nn

from latentspace.config import NOMIC_VISION_ARCH, VisionTowerConfig
from latentspace.models.pretrained import PYPI_PREFIX, StartingWeights, create_timm_backbone


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


def _nomic_backbone(cfg: VisionTowerConfig) -> nn.Module:
    """Nomic's vision model: loaded from a published directory (init_checkpoint), or built from the
    config a saved latentspace model recorded in model_kwargs (its weights then come from that file)."""
    from latentspace.models.nomic.vision import NomicVision, NomicVisionConfig, load_nomic_vision

    if cfg.init_checkpoint and cfg.init_checkpoint.startswith(PYPI_PREFIX):
        raise ValueError(
            "vision.arch nomic-vision starts from a nomic-embed-vision directory, not from "
            f"{cfg.init_checkpoint}: set vision.init_checkpoint to that directory"
        )
    if cfg.init_checkpoint:
        backbone = load_nomic_vision(Path(cfg.init_checkpoint).expanduser())
    elif "nomic_config" in cfg.model_kwargs:
        backbone = NomicVision(NomicVisionConfig.from_hf_dict(cfg.model_kwargs["nomic_config"]))
    else:
        raise ValueError("vision.arch nomic-vision needs vision.init_checkpoint: a nomic-embed-vision directory")
    size = backbone.config.img_size
    if (cfg.image_size, cfg.image_size) != tuple(size):
        raise ValueError(
            f"vision.image_size is {cfg.image_size} but this nomic-embed-vision model takes "
            f"{size[0]}x{size[1]} images: set vision.image_size={size[0]}"
        )
    if cfg.pool != "cls":
        raise ValueError(
            "nomic-vision pools with its own attention selector, added to every token: set vision.pool=cls"
        )
    return backbone


def build_backbone(cfg: VisionTowerConfig) -> tuple[nn.Module, StartingWeights | None]:
    """The backbone, and what its weights started from (None: from scratch, or Nomic's)."""
    if cfg.arch == NOMIC_VISION_ARCH:
        return _nomic_backbone(cfg), None
    kwargs = dict(cfg.model_kwargs)
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    if timm.models.is_model(cfg.arch) is False:
        raise ValueError(f"unknown timm architecture {cfg.arch!r} (see timm.list_models())")
    # A file or an installed package's weights (models/pretrained.py), heads dropped, fitted and
    # loaded through timm, which adapts position / patch embeddings to the image and patch size.
    return create_timm_backbone(
        cfg.arch, cfg.init_checkpoint, img_size=cfg.image_size, what="vision.init_checkpoint", **kwargs
    )


def create_backbone(cfg: VisionTowerConfig) -> nn.Module:
    return build_backbone(cfg)[0]


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionTowerConfig, out_dim: int):
        super().__init__()
        self.cfg = cfg
        try:
            self.backbone, self.start = build_backbone(cfg)
        except RuntimeError as e:
            raise RuntimeError(f"could not build vision tower {cfg.arch!r}: {e}") from e
        self.nomic = cfg.arch == NOMIC_VISION_ARCH
        # ConvNets run in channels_last (NHWC): oneDNN's convolutions, depthwise ones above all,
        # are about twice as fast in it on CPUs (EfficientNet-Lite0 at 160 px, batch 32: 178 vs 83
        # images/s). A ViT has one convolution (its patch embedding) and gains nothing.
        self.channels_last = not self.nomic and sum(isinstance(m, nn.Conv2d) for m in self.backbone.modules()) > 1
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        width = int(self.backbone.config.n_embd if self.nomic else self.backbone.num_features)
        self.num_prefix_tokens = 1 if self.nomic else int(getattr(self.backbone, "num_prefix_tokens", 0))
        if cfg.pool == "cls" and self.num_prefix_tokens == 0:
            raise ValueError(
                f"vision.pool=cls needs a model with a class token; {cfg.arch} has none (use mean or attn)"
            )
        self.attn_pool = AttentionPool(width, _heads_for(width)) if cfg.pool == "attn" else None
        self.out_dim = out_dim
        self.proj = nn.Linear(width, out_dim, bias=False) if not cfg.head_hidden else MLPHead(width, out_dim, cfg)
        if cfg.grad_checkpointing:
            if self.nomic:
                raise ValueError("vision.grad_checkpointing is not available for nomic-vision yet")
            self.backbone.set_grad_checkpointing(True)
        if isinstance(self.proj, MLPHead):
            pass  # PyTorch's default initialisation
        elif self.nomic and width == out_dim:
            nn.init.eye_(self.proj.weight)  # the backbone's output already is the embedding
        else:
            nn.init.normal_(self.proj.weight, std=width**-0.5)

    def saved_config(self) -> VisionTowerConfig:
        """The config a model directory records: enough to rebuild this network, with no pointer
        to where its starting weights came from (the directory has the weights)."""
        update: dict = {"init_checkpoint": None, "init_from": None}
        if self.nomic:
            update["model_kwargs"] = {"nomic_config": json.loads(json.dumps(self.backbone.config.to_hf_dict()))}
        return self.cfg.model_copy(update=update)

    def init_source(self) -> dict | None:
        """What the backbone's weights started from, for the model directory's info: file, sha256,
        and for a package its name, version and licence; None from scratch or from Nomic's."""
        return self.start.describe() if self.start is not None else None

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """(mean, std) the backbone's starting weights were trained with, if it has pretrained ones."""
        if self.nomic and self.cfg.init_checkpoint:
            from latentspace.models.nomic.preprocess import NomicImagePreprocessor

            pre = NomicImagePreprocessor.from_dir(Path(self.cfg.init_checkpoint).expanduser())
            return tuple(pre.mean), tuple(pre.std)
        pretrained = getattr(self.backbone, "pretrained_cfg", None) or {}
        if self.cfg.init_checkpoint and "mean" in pretrained and "std" in pretrained:
            return tuple(float(x) for x in pretrained["mean"]), tuple(float(x) for x in pretrained["std"])
        return None

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.nomic:
            return self.backbone(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone.forward_features(images)
        if feats.ndim == 4:  # (B, C, H, W) from a ConvNet -> (B, H*W, C)
            feats = feats.flatten(2).transpose(1, 2)
        return feats

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (B, width): what the head projects, and what
        `freeze_backbone` training caches."""
        tokens = self.tokens(images)
        if self.cfg.pool == "cls":
            return tokens[:, 0]
        if self.cfg.pool == "mean":
            return tokens[:, self.num_prefix_tokens :].mean(1)
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
