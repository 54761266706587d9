"""A served model: an Embedder (models/load.py), the name clients call it by, and the runtime its
image forward runs on (serve/backends.py).

Everything model-specific (tokenising, preprocessing, forwards, the latent-space identity) comes
from the Embedder, so any spec `load` understands can be served, and text vectors are the same
as local mode's. Only the image forward may be swapped for a faster runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from latentspace.models.embedder import Embedder
from latentspace.models.load import default_name, load, parse_spec
from latentspace.serve.backends import Choice, accelerate, choose, describe_measurements, probe_images
from latentspace.space import hash_state_dict

log = logging.getLogger(__name__)

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
    image_backend: Choice | None

    def describe(self) -> dict[str, Any]:
        out = {"id": self.name, "object": "model", "owned_by": "latentspace", **self.model.describe()}
        if self.image_backend is not None:
            out["image_backend"] = self.image_backend.name
            out["image_backend_reason"] = self.image_backend.reason
            if self.image_backend.batch:
                out["image_batch"] = self.image_backend.batch
        return out


def load_served_model(name: str, spec: str, partners: Sequence[Embedder] = (), *, image_backend: str = "auto",
                      image_precision: str | None = None, backend_cache_dir: str | None = None) -> ServedModel:
    """Load `spec` (with `partners`, the models loaded before it) and put its image forward on
    `image_backend` (auto: measured, see serve/backends.py). Raises ValueError / OSError with a
    clear message."""
    model = load(spec, partners=partners)
    if "image" not in model.modalities:
        return ServedModel(name, spec, model, None, None)
    if image_backend == "auto":
        choice = auto_image_backend(model, Path(backend_cache_dir) if backend_cache_dir else None)
        log.info("model %s: images on %s%s: %s", name, choice.name, " (cached calibration)" if choice.cached else "",
                 choice.reason)
        log.debug("model %s calibration: %s", name, describe_measurements(choice))
    else:
        choice = Choice(image_backend, image_precision or "fp32", "chosen with --image-backend")
    return ServedModel(name, spec, model, image_forward(model, choice), choice)


def auto_image_backend(model: Embedder, cache_dir: Path | None = None) -> Choice:
    """`--image-backend auto` for this model: the calibrated choice (serve/backends.py), cached by
    the model's identity and its image weights."""
    fingerprint = f"{model.kind}|{model.space}|{hash_state_dict(model.image_module.state_dict())}"
    return choose(model.image_module, probe_images(model.preprocess_image), model_fingerprint=fingerprint,
                  cache_dir=cache_dir)


def image_forward(model: Embedder, choice: Choice) -> PixelForward:
    """The model's image forward on the chosen runtime."""
    if choice.name == "torch-fp32":
        return model.image_rows
    from PIL import Image

    example = torch.stack([model.preprocess_image(Image.new("RGB", (64, 64)))] * 2)
    return accelerate(model.image_module, example, choice.backend, choice.precision)


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
