"""Image preprocessing for Nomic Embed Vision, without transformers' image processors.

The published `preprocessor_config.json` describes a CLIP image processor: resize with PIL bicubic,
optionally centre-crop, scale to [0, 1] and normalise with the CLIP mean/std. Two resize policies
occur in the wild and give different pixels (and different vectors):

* `size: {"height": H, "width": W}` squashes the image to exactly H x W, ignoring its aspect ratio.
  This is what nomic-embed-vision-v1.5 ships today, so it is the default here.
* `size: {"shortest_edge": S}` (or an int, CLIP's older spelling) scales the shorter edge to S
  keeping the aspect ratio, then cuts the centre `crop_size` out of it.

Both are implemented directly with PIL + torch so that the result does not depend on which
transformers version (and which of its "slow"/"fast" backends) happens to be installed; the tests
compare against transformers' PIL backend, which this reproduces bit for bit. The arithmetic
mirrors it on purpose: the uint8 pixels are scaled in float64 and rounded to float32 once, then
normalised in float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentspace.data.images import to_rgb

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
RESCALE_FACTOR = 1 / 255
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the value transformers' configs store as "resample"


def published_preprocessor_config(height: int = 224, width: int | None = None) -> dict[str, Any]:
    """The `preprocessor_config.json` that nomic-embed-vision-v1.5 publishes (squash to
    height x width, bicubic, CLIP mean/std), for a model whose input is `height` x `width`."""
    width = height if width is None else width
    return {
        "crop_size": {"height": height, "width": width},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": BICUBIC,
        "rescale_factor": RESCALE_FACTOR,
        "size": {"height": height, "width": width},
    }


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a {"height", "width"} dict -> (height, width)."""
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        raise ValueError(f"preprocessor config field {name!r} must have 'height' and 'width', got {dict(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value), int(value)
    raise ValueError(f"preprocessor config field {name!r} must be an int or a height/width dict, got {value!r}")


def _triple(values: Iterable[float] | float, name: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"preprocessor config field {name!r} needs 3 values (R, G, B), got {len(out)}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class NomicImagePreprocessor:
    """PIL image -> (3, H, W) float32 tensor, as the model's preprocessor config describes.

    Exactly one of `size` (squash to (height, width)) and `shortest_edge` (aspect-preserving resize;
    then `crop_size` is cut from the centre) is set. The defaults are the published ones.

    Transparency: images are composited onto **white** before anything else, via the project's
    `latentspace.data.images.to_rgb`, so this preprocessor behaves like every other image path in
    latentspace. The historical CLIP processor dropped the alpha channel instead (PIL
    `convert("RGB")`), which turns transparent emoji and icons into black silhouettes; one model
    would then score very differently depending on which code read the image. (transformers 5
    itself now composites onto white as well.) RGB input is used as is.
    """

    size: tuple[int, int] | None = (224, 224)
    shortest_edge: int | None = None
    crop_size: tuple[int, int] | None = None
    resample: int = BICUBIC
    do_rescale: bool = True
    rescale_factor: float = RESCALE_FACTOR
    do_normalize: bool = True
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if (self.size is None) == (self.shortest_edge is None):
            raise ValueError(
                "give exactly one of size (squash to height x width) and shortest_edge "
                "(resize the shorter edge, then centre-crop)"
            )
        if self.shortest_edge is not None and self.crop_size is None:
            raise ValueError(
                "shortest_edge resizing keeps the aspect ratio, so crop_size is needed to get a fixed-size image"
            )
        if self.crop_size is not None:
            # A crop larger than the resized image would need padding; no published config does that.
            limit = self.size if self.size is not None else (self.shortest_edge, self.shortest_edge)
            if self.crop_size[0] > limit[0] or self.crop_size[1] > limit[1]:
                raise ValueError(f"crop_size {self.crop_size} is larger than the resized image {limit}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"image_std must be positive, got {self.std}")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> NomicImagePreprocessor:
        """From the fields of a CLIP-style `preprocessor_config.json`. `do_convert_rgb` is not read:
        conversion to RGB always happens (onto white, see the class docstring)."""
        if not config.get("do_resize", True):
            raise ValueError(
                "preprocessor config field 'do_resize' is false; the model needs a fixed input size, "
                "so images must be resized"
            )
        raw_size = config.get("size", {"height": 224, "width": 224})
        size: tuple[int, int] | None = None
        shortest: int | None = None
        if isinstance(raw_size, Mapping) and "shortest_edge" in raw_size:
            shortest = int(raw_size["shortest_edge"])
        elif isinstance(raw_size, (int, float)) and not isinstance(raw_size, bool):
            shortest = int(raw_size)  # CLIP's old spelling: an int size means "shortest edge"
        else:
            size = _pair(raw_size, "size")
        crop: tuple[int, int] | None = None
        if config.get("do_center_crop", True) and config.get("crop_size") is not None:
            crop = _pair(config["crop_size"], "crop_size")
        if size is not None and crop == size:
            crop = None  # a centre crop to the size just resized to is a no-op
        return cls(
            size=size,
            shortest_edge=shortest,
            crop_size=crop,
            resample=int(config.get("resample", BICUBIC)),
            do_rescale=bool(config.get("do_rescale", True)),
            rescale_factor=float(config.get("rescale_factor", RESCALE_FACTOR)),
            do_normalize=bool(config.get("do_normalize", True)),
            mean=_triple(config.get("image_mean", CLIP_MEAN), "image_mean"),
            std=_triple(config.get("image_std", CLIP_STD), "image_std"),
        )

    @classmethod
    def from_dir(cls, directory: str | Path) -> NomicImagePreprocessor:
        """From `directory/preprocessor_config.json`, or the published defaults when there is none."""
        path = Path(directory) / PREPROCESSOR_CONFIG_NAME
        if not path.is_file():
            return cls()
        try:
            config = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(config, Mapping):
            raise ValueError(f"{path} must hold a JSON object")
        try:
            return cls.from_dict(config)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    # -- use ----------------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the tensors this returns."""
        if self.crop_size is not None:
            return self.crop_size
        assert self.size is not None
        return self.size

    def resize(self, image: Image.Image) -> Image.Image:
        """RGB image -> resized (and cropped) RGB image, before any arithmetic."""
        if self.size is not None:
            height, width = self.size
        else:
            assert self.shortest_edge is not None
            # transformers' rule, kept exactly: the short edge becomes S, the long one int(S*long/short).
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            height, width = (new_long, new_short) if w <= h else (new_short, new_long)
        if image.size != (width, height):
            image = image.resize((width, height), resample=self.resample)
        if self.crop_size is not None:
            crop_h, crop_w = self.crop_size
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            if (crop_h, crop_w) != (height, width):
                image = image.crop((left, top, left + crop_w, top + crop_h))
        return image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> (3, H, W) float32 tensor."""
        if image.mode != "RGB":
            image = to_rgb(image)
        pixels = np.asarray(self.resize(image), dtype=np.uint8)  # (H, W, 3)
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        # float64 scale, one rounding to float32, then float32 normalisation (as transformers does).
        x = (x.to(torch.float64) * self.rescale_factor if self.do_rescale else x.to(torch.float64)).to(torch.float32)
        if self.do_normalize:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def describe(self) -> dict[str, Any]:
        """These settings in the words every model's preprocessing is recorded in (a collection's
        provenance): the resize (squash to a size, or shortest edge), the centre crop, mean/std."""
        resample = Image.Resampling(self.resample).name.lower()
        if self.size is not None:
            resize: dict[str, Any] = {"size": list(self.size), "interpolation": resample, "keep_aspect": False}
        else:
            resize = {"shortest_edge": self.shortest_edge, "interpolation": resample, "keep_aspect": True}
        out: dict[str, Any] = {"steps": ["NomicImagePreprocessor"], "resize": resize}
        if self.crop_size is not None:
            out["crop"] = list(self.crop_size)
        if self.do_normalize:
            out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def batch(self, images: Iterable[Image.Image]) -> torch.Tensor:
        """Several PIL images -> (B, 3, H, W) float32 tensor."""
        return torch.stack([self(image) for image in images])
