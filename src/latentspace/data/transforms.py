"""Image transforms: a plain resize for inference, augmentation for training.

Augmentation matters more than usual here: the default corpus trains on one emoji art style and
is evaluated on another, so the model must not latch on to one artist's colours or line weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


def _to_tensor(pre: Preprocess) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocess) -> v2.Compose:
    """PIL image -> normalised float tensor at the model's input size."""
    size = pre.image_size
    return v2.Compose(
        [v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True), *_to_tensor(pre)]
    )


def load_transform(pre: Preprocess) -> v2.Compose:
    """PIL image -> uint8 tensor at twice the input size: what data workers hand to training.

    Augmentation then runs on whole batches (`BatchAugment`), far cheaper than per-image PIL
    transforms (docs/benchmarks.md); the 2x margin lets crops zoom in without upsampling blur.
    """
    size = 2 * pre.image_size
    return v2.Compose(
        [v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.ToImage()]
    )


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


class BatchAugment:
    """Outlines or line art, random resized crop (or zoom-out), rotation, flip, colour jitter and
    greyscale for a whole uint8 batch, drawn from an explicit generator so a resumed run replays
    the same augmentations. An augmentation that is switched off draws nothing from the generator,
    so adding one leaves the stream of an existing config unchanged."""

    def __init__(self, pre: Preprocess, aug: AugmentConfig):
        self.pre, self.aug = pre, aug
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = images.float() / 255.0
        x = self._edges(x, gen)
        x = self._geometry(x, gen)
        x = self._colour(x, gen)
        return (x - self.mean) / self.std

    def _geometry(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a, n, big = self.aug, x.shape[0], 2 * self.pre.image_size
        area = _uniform(gen, n, a.scale_min, 1.0)
        log_ratio = _uniform(gen, n, -0.2231, 0.2231)  # aspect ratio in [0.8, 1.25]
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        if a.zoom_out > 1.0:
            # Half the batch shows the whole image shrunk into a white margin instead of a crop.
            side = _uniform(gen, n, 1.0, a.zoom_out)
            shrink = torch.rand(n, generator=gen) < 0.5
            w, h = torch.where(shrink, side, w), torch.where(shrink, side, h)
        cx = _uniform(gen, n, -1.0, 1.0) * (1 - w)  # with w > 1 this keeps the image inside the frame
        cy = _uniform(gen, n, -1.0, 1.0) * (1 - h)
        angle = _uniform(gen, n, -a.rotation, a.rotation).deg2rad()
        flip = torch.where(torch.rand(n, generator=gen) < a.hflip, -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [torch.stack([cos * w * flip, -sin * h, cx], 1), torch.stack([sin * w * flip, cos * h, cy], 1)], 1
        )
        grid = F.affine_grid(theta, [n, 3, big, big], align_corners=False)
        # Sample (x - 1) with zero padding so whatever falls outside the image is white.
        out = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0
        return F.interpolate(out, size=self.pre.image_size, mode="bilinear", antialias=True, align_corners=False)

    def _edges(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Outline styles at the loaded (2x) size, so strokes scale with the crop: per image, with
        probability `outline` dark lines along its colour edges, with probability `line_art` the
        lines alone on white; the stroke is one or two widths, the ink black to dark grey."""
        a, n = self.aug, x.shape[0]
        if not (a.outline or a.line_art):
            return x
        u = torch.rand(n, generator=gen)
        thick = torch.rand(n, generator=gen) < 0.5
        ink = _uniform(gen, n, 0.0, 0.3).view(n, 1, 1, 1)
        edge = _edge_strength(x)
        edge = torch.where(thick.view(n, 1, 1, 1), F.max_pool2d(edge, 3, stride=1, padding=1), edge)
        outlined = x * (1 - edge) + ink * edge
        line_art = (1 - edge) + ink * edge
        view = (n, 1, 1, 1)
        x = torch.where((u < a.outline).view(view), outlined, x)
        return torch.where(((u >= a.outline) & (u < a.outline + a.line_art)).view(view), line_art.expand_as(x), x)

    def _colour(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a, n = self.aug, x.shape[0]
        j = a.color_jitter
        view = (n, 1, 1, 1)
        if j:
            x = x * _uniform(gen, n, 1 - j, 1 + j).view(view)  # brightness
            m = _gray(x).mean((2, 3), keepdim=True)
            x = (x - m) * _uniform(gen, n, 1 - j, 1 + j).view(view) + m  # contrast
            g = _gray(x)
            x = (x - g) * _uniform(gen, n, 1 - j, 1 + j).view(view) + g  # saturation
        if a.hue:
            x = _rotate_hue(x, _uniform(gen, n, -a.hue, a.hue) * 2 * math.pi)
        if a.grayscale:
            to_gray = (torch.rand(n, generator=gen) < a.grayscale).view(view)
            x = torch.where(to_gray, _gray(x).expand_as(x), x)
        return x.clamp(0.0, 1.0)


def _edge_strength(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, h, w) in [0, 1]: Sobel gradient magnitude over the colour channels, where faint
    shading (gradients in Noto's art) stays 0 and a clear colour boundary reaches 1. The image is
    padded with white, so shapes touching the border are outlined there too."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1).repeat(3, 1, 1, 1)  # (6, 1, 3, 3): x, y per channel
    grad = F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), kernels, groups=3)
    magnitude = grad.square().sum(1, keepdim=True).sqrt()
    return ((magnitude - 0.1) * 3).clamp(0.0, 1.0)


def _rotate_hue(x: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    """Hue rotation as a rotation of the chroma plane in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    c, s = radians.cos().view(-1, 1, 1), radians.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq)


def describe_transform(transform) -> dict:
    """What a torchvision transform (v1 or v2, a Compose or one step) does to an image, read from
    its steps: `steps` (their class names, in order), and `resize` (size, interpolation,
    antialias), `crop` (a centre crop's size), `mean` / `std` (normalisation) where a step says.
    What a collection records as its preprocessing, so it is never restated by hand."""
    steps = list(getattr(transform, "transforms", [transform]))
    out: dict = {"steps": [type(step).__name__ for step in steps]}
    for step in steps:
        name = type(step).__name__
        if name == "Resize":
            interpolation = getattr(step, "interpolation", None)
            out["resize"] = {
                "size": _plain(step.size),
                "interpolation": str(getattr(interpolation, "value", interpolation)),
                "antialias": getattr(step, "antialias", None),
            }
        elif name == "CenterCrop":
            out["crop"] = _plain(step.size)
        elif name == "Normalize":
            out["mean"], out["std"] = [float(v) for v in step.mean], [float(v) for v in step.std]
    return out


def _plain(size) -> int | list[int]:
    return int(size) if isinstance(size, int) else [int(v) for v in size]
