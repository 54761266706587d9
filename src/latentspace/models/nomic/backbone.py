"""nomic-embed-vision as a vision tower's backbone (`vision.arch: nomic-vision`).

Training then starts from a published nomic-embed-vision directory (`vision.init_checkpoint`) and
continues in its space, with nomic-embed-text as the locked text tower: the model's tokens already
carry Nomic's attention-pooled vector on every position (models/nomic/vision.py), so `pool: cls`
takes token 0 and a projection of the same width starts as the identity. Before any step the
tower *is* the published model.

A saved latentspace model records the network's config.json fields in `vision.model_kwargs`
under `nomic_config` (the weights are in its model.safetensors), so it is rebuilt from those,
with no pointer to the directory it started from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from latentspace.config import VisionTowerConfig
from latentspace.models.nomic.vision import NomicVision
from latentspace.models.nomic.vision_config import NomicVisionConfig
from latentspace.models.nomic.vision_dir import load_nomic_vision
from latentspace.models.pretrained import PYPI_PREFIX

CONFIG_KEY = "nomic_config"  # where a saved config keeps the network's config.json fields


class NomicBackbone:
    """Nomic's vision model behind the `Backbone` interface (models/backbone.py)."""

    prefix_tokens = 1  # the class token, which the selector's pooled vector was added to
    start = None  # Nomic's weights are a model of their own, not a timm starting point
    in_target_space = True  # its token 0 is the image embedding, in nomic-embed-text's space

    def __init__(self, cfg: VisionTowerConfig):
        self.cfg = cfg
        if cfg.init_checkpoint and cfg.init_checkpoint.startswith(PYPI_PREFIX):
            raise ValueError(
                "vision.arch nomic-vision starts from a nomic-embed-vision directory, not from "
                f"{cfg.init_checkpoint}: set vision.init_checkpoint to that directory"
            )
        if cfg.init_checkpoint:
            self.module = load_nomic_vision(Path(cfg.init_checkpoint).expanduser())
        elif CONFIG_KEY in cfg.model_kwargs:
            self.module = NomicVision(NomicVisionConfig.from_hf_dict(cfg.model_kwargs[CONFIG_KEY]))
        else:
            raise ValueError("vision.arch nomic-vision needs vision.init_checkpoint: a nomic-embed-vision directory")
        size = self.module.config.img_size
        if (cfg.image_size, cfg.image_size) != tuple(size):
            raise ValueError(
                f"vision.image_size is {cfg.image_size} but this nomic-embed-vision model takes "
                f"{size[0]}x{size[1]} images: set vision.image_size={size[0]}"
            )
        if cfg.pool != "cls":
            raise ValueError(
                "nomic-vision pools with its own attention selector, added to every token: set vision.pool=cls"
            )
        self.width = int(self.module.config.n_embd)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    def normalisation(self) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """What the directory's preprocessor_config.json says (a rebuilt saved model has no
        directory; its own config records the normalisation it trained with)."""
        if not self.cfg.init_checkpoint:
            return None
        from latentspace.models.nomic.preprocess import NomicImagePreprocessor

        pre = NomicImagePreprocessor.from_dir(Path(self.cfg.init_checkpoint).expanduser())
        return tuple(pre.mean), tuple(pre.std)

    def saved_model_kwargs(self) -> dict[str, Any]:
        # Through JSON, so the record holds plain lists and numbers, as a config file read back would.
        return {CONFIG_KEY: json.loads(json.dumps(self.module.config.to_hf_dict()))}

    def set_grad_checkpointing(self) -> None:
        raise ValueError("vision.grad_checkpointing is not available for nomic-vision yet")
