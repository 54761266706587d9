"""A served model: an Embedder (models/load.py), the name clients call it by, and the runtimes
its image and text forwards run on (serve/backends.py).

Everything model-specific (tokenising, preprocessing, forwards, the latent-space identity) comes
from the Embedder, so any spec `load` understands can be served. Only the forwards may be swapped
for a faster runtime, within cosine 0.999 of PyTorch fp32 (`--text-backend torch` keeps text
bit-identical to local mode).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentspace.models.embedder import Embedder
from latentspace.models.load import default_name, load, parse_spec
from latentspace.models.text_tower import pad_ids
from latentspace.serve.backends import (
    Choice,
    accelerate,
    choose,
    describe_measurements,
    probe_images,
    probe_text_inputs,
)
from latentspace.space import hash_state_dict

log = logging.getLogger(__name__)

PixelForward = Callable[[torch.Tensor], torch.Tensor]
IdsForward = Callable[[list[list[int]]], torch.Tensor]  # token ids of a few texts -> rows


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
    text_forward: IdsForward | None = None  # None: the model's own PyTorch text_rows
    text_backend: Choice | None = None

    def describe(self) -> dict[str, Any]:
        out = {"id": self.name, "object": "model", "owned_by": "latentspace", **self.model.describe()}
        if self.text_backend is not None:
            out["text_backend"] = self.text_backend.name
            out["text_backend_reason"] = self.text_backend.reason
        if self.image_backend is not None:
            out["image_backend"] = self.image_backend.name
            out["image_backend_reason"] = self.image_backend.reason
            if self.image_backend.batch:
                out["image_batch"] = self.image_backend.batch
        return out


def load_served_model(
    name: str,
    spec: str,
    partners: Sequence[Embedder] = (),
    *,
    image_backend: str = "auto",
    image_precision: str | None = None,
    text_backend: str = "auto",
    text_precision: str | None = None,
    backend_cache_dir: str | None = None,
) -> ServedModel:
    """Load `spec` (with `partners`, the models loaded before it) and put its forwards on
    `image_backend` / `text_backend` (auto: measured, see serve/backends.py). Raises ValueError /
    OSError with a clear message."""
    model = load(spec, partners=partners)
    cache = Path(backend_cache_dir) if backend_cache_dir else None
    text_choice, fast_text = None, None
    if "text" in model.modalities:
        text_choice = (
            auto_text_backend(model, cache)
            if text_backend == "auto"
            else Choice(text_backend, text_precision or "fp32", "chosen with --text-backend")
        )
        log.info("model %s: text on %s: %s", name, text_choice.name, text_choice.reason)
        fast_text = text_forward(model, text_choice)
    if "image" not in model.modalities:
        return ServedModel(name, spec, model, None, None, fast_text, text_choice)
    if image_backend == "auto":
        choice = auto_image_backend(model, cache)
        log.info(
            "model %s: images on %s%s: %s",
            name,
            choice.name,
            " (cached calibration)" if choice.cached else "",
            choice.reason,
        )
        log.debug("model %s calibration: %s", name, describe_measurements(choice))
    else:
        choice = Choice(image_backend, image_precision or "fp32", "chosen with --image-backend")
    return ServedModel(name, spec, model, image_forward(model, choice), choice, fast_text, text_choice)


def auto_image_backend(model: Embedder, cache_dir: Path | None = None) -> Choice:
    """`--image-backend auto` for this model: the calibrated choice (serve/backends.py), cached by
    the model's identity and its image weights."""
    fingerprint = f"{model.kind}|{model.space}|{hash_state_dict(model.image_module.state_dict())}"
    return choose(
        model.image_module, probe_images(model.preprocess_image), model_fingerprint=fingerprint, cache_dir=cache_dir
    )


def auto_text_backend(model: Embedder, cache_dir: Path | None = None) -> Choice:
    """`--text-backend auto`: the calibrated choice for the text forward, or PyTorch when the
    model's text forward cannot be exported as one module."""
    try:
        module = model.text_module
    except NotImplementedError as e:
        return Choice("torch", "fp32", f"the only runtime for this text forward ({e})")
    fingerprint = f"text|{model.kind}|{model.space}"  # the space fingerprint covers the text weights
    probe = probe_text_inputs(model.tokenize, model.pad_id)
    return choose(module, probe, model_fingerprint=fingerprint, cache_dir=cache_dir)


def text_forward(model: Embedder, choice: Choice) -> IdsForward | None:
    """The model's text forward on the chosen runtime (None: PyTorch, the model's own)."""
    if choice.name == "torch-fp32":
        return None
    example = pad_ids(model.tokenize(["an example text", "a text"], "search_document"), model.pad_id)
    fast = _built(
        lambda: accelerate(model.text_module, example, choice.backend, choice.precision), choice, f"{model.name} text"
    )
    if fast is None:
        return None
    return _guarded(lambda ids: fast(*pad_ids(ids, model.pad_id)), model.text_rows, choice, f"{model.name} text")


def image_forward(model: Embedder, choice: Choice) -> PixelForward:
    """The model's image forward on the chosen runtime."""
    if choice.name == "torch-fp32":
        return model.image_rows
    from PIL import Image

    example = torch.stack([model.preprocess_image(Image.new("RGB", (64, 64)))] * 2)
    fast = _built(
        lambda: accelerate(model.image_module, example, choice.backend, choice.precision), choice, f"{model.name} image"
    )
    return model.image_rows if fast is None else _guarded(fast, model.image_rows, choice, f"{model.name} image")


def _built(build: Callable, choice: Choice, what: str):
    """The accelerated forward, or None (PyTorch serves) when the runtime cannot build it here:
    a faster runtime is never worth a model that does not load."""
    try:
        return build()
    except Exception as e:  # noqa: BLE001 - any failure means: serve with PyTorch
        log.warning(
            "%s forward: %s could not be built (%s: %s); serving with PyTorch fp32",
            what,
            choice.name,
            type(e).__name__,
            e,
        )
        choice.reason = f"fell back to PyTorch fp32: {choice.name} could not be built ({type(e).__name__})"
        choice.backend, choice.precision = "torch", "fp32"
        return None


def _guarded(fast: Callable, slow: Callable, choice: Choice, what: str) -> Callable:
    """`fast`, falling back to `slow` (PyTorch) for good if it ever raises: a runtime that fails
    on an input calibration did not show (a shape its graph cannot take) costs speed, not answers."""
    state = {"fast": fast}

    def run(items):
        current = state["fast"]
        if current is not None:
            try:
                return current(items)
            except Exception as e:  # noqa: BLE001
                log.error(
                    "%s forward on %s failed (%s: %s); serving with PyTorch fp32 from now on",
                    what,
                    choice.name,
                    type(e).__name__,
                    e,
                )
                choice.reason = f"fell back to PyTorch fp32 after {choice.name} failed ({type(e).__name__})"
                choice.backend, choice.precision = "torch", "fp32"
                state["fast"] = None
        return slow(items)

    return run


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
