"""A served model: an Embedder (models/load.py), the name clients call it by, and the runtime its
image forward runs on (serve/backends.py).

Everything model-specific (tokenising, preprocessing, forwards, the latent-space identity) comes
from the Embedder, so any spec `load` understands can be served, and text vectors are the same
as local mode's. Only the image forward may be swapped for a faster runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from latentspace.models.embedder import Embedder
from latentspace.models.load import default_name, load, parse_spec
from latentspace.serve.backends import Backend, Precision, accelerate

PixelForward = Callable[[torch.Tensor], torch.Tensor]


def parse_model_arg(arg: str) -> tuple[str, str]:
    """'NAME=SPEC' or 'SPEC' -> (name, spec); the default name is the directory's name. A NAME
    has no '/' or '?' (so 'DIR?text=OTHER' is a spec, not a name)."""
    name, sep, spec = arg.partition("=")
    if not sep or not name or "/" in name or "?" in name:
        return default_name(arg), arg
    return name, spec


@dataclass
class ServedModel:
    name: str
    spec: str
    model: Embedder
    image_forward: PixelForward | None  # pixels -> rows on the chosen runtime (None: no image side)
    image_backend: str | None

    def describe(self) -> dict[str, Any]:
        out = {"id": self.name, "object": "model", "owned_by": "latentspace", **self.model.describe()}
        if self.image_backend is not None:
            out["image_backend"] = self.image_backend
        return out


def load_served_model(name: str, spec: str, partners: Sequence[Embedder] = (), *, image_backend: Backend = "torch",
                      image_precision: Precision = "fp32") -> ServedModel:
    """Load `spec` (with `partners`, the models loaded before it) and put its image forward on
    `image_backend`. Raises ValueError / OSError with a clear message."""
    model = load(spec, partners=partners)
    if "image" not in model.modalities:
        return ServedModel(name, spec, model, None, None)
    forward = model.image_rows
    if (image_backend, image_precision) != ("torch", "fp32"):
        from PIL import Image

        example = torch.stack([model.preprocess_image(Image.new("RGB", (64, 64)))] * 2)
        forward = accelerate(model.image_module, example, image_backend, image_precision)
    return ServedModel(name, spec, model, forward, f"{image_backend}-{image_precision}")


def load_order(specs: Sequence[str]) -> list[int]:
    """Indices of `specs` in the order to load them: image models that take their text side from a
    partner (Nomic vision) after the others, so they find it already loaded."""
    from latentspace.models.nomic.vision import is_nomic_vision_dir

    def pairs_later(spec: str) -> bool:
        base, _ = parse_spec(spec)
        try:
            return is_nomic_vision_dir(base)
        except OSError:
            return False

    return sorted(range(len(specs)), key=lambda i: pairs_later(specs[i]))
