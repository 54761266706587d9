"""Image transforms: a plain resize for inference, augmentation for training.

Augmentation matters more than usual here: the default corpus trains on one emoji art style and
is evaluated on another, so the model must not latch on to one artist's colours or line weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from latentspace.config import AugmentConfig

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """What a model directory records about its input, so inference matches training."""

    image_size: int
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


def _to_tensor(pre: Preprocess) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocess) -> v2.Compose:
    size = pre.image_size
    return v2.Compose([v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True), *_to_tensor(pre)])


def train_transform(pre: Preprocess, aug: AugmentConfig) -> v2.Compose:
    size = pre.image_size
    steps: list = [
        # Rotate before cropping so the white fill stays at the image border.
        v2.RandomRotation(aug.rotation, interpolation=v2.InterpolationMode.BILINEAR, fill=255) if aug.rotation else None,
        v2.RandomResizedCrop(size, scale=(aug.scale_min, 1.0), ratio=(0.8, 1.25),
                             interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(aug.hflip) if aug.hflip else None,
        v2.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter, aug.hue) if aug.color_jitter or aug.hue else None,
        v2.RandomGrayscale(aug.grayscale) if aug.grayscale else None,
        *_to_tensor(pre),
    ]
    return v2.Compose([s for s in steps if s is not None])
