"""A model with its forwards on the runtimes chosen for them: what every entry point runs.

`on_runtimes(model, image=..., text=...)` wraps any Embedder: tokenising, preprocessing, the
latent-space identity and everything else stay the model's own; only the two batched forwards
(`image_rows`, `text_rows`) run on the chosen runtimes, and the images per forward are the ones
measured best. A runtime that cannot be built for the model, or that later fails on an input,
costs speed, not answers: PyTorch fp32 runs from then on, and the choice says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentspace.models.embedder import Embedder
from latentspace.models.text_tower import pad_ids
from latentspace.runtime.builders import as_inputs, build_forward
from latentspace.runtime.choice import AUTO, EXACT, MIN_COSINE, Choice, RuntimeSettings, choose, other_shape
from latentspace.space import hash_state_dict

log = logging.getLogger(__name__)


class ModelOnRuntimes(Embedder):
    """`model`, with its image and text forwards on the runtimes in `choices`."""

    def __init__(
        self,
        model: Embedder,
        choices: dict[str, Choice],
        image: Callable[[torch.Tensor], torch.Tensor] | None,
        text: Callable[[Sequence[Sequence[int]]], torch.Tensor] | None,
        asked: tuple[RuntimeSettings, RuntimeSettings] = (AUTO, EXACT),
    ) -> None:
        self.model, self.choices, self.asked = model, choices, asked  # asked: (image, text) settings
        self.kind, self.name, self.identity = model.kind, model.name, model.identity
        self.modalities, self.max_tokens, self.pad_id = model.modalities, model.max_tokens, model.pad_id
        self.task_types, self.text_batch_size = model.task_types, model.text_batch_size
        image_choice = choices.get("image")
        self.image_batch_size = (image_choice.batch if image_choice else None) or model.image_batch_size
        self._image, self._text = image, text

    def __getattr__(self, name: str) -> Any:
        # What is not part of the Embedder interface (a Nomic text model's `text` tower, which a
        # Nomic vision model loaded beside it pairs with) is the model's own.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    # the model's own steps
    def tokenize(self, texts, task_type):
        return self.model.tokenize(texts, task_type)

    def split_long(self, text, task_type):
        return self.model.split_long(text, task_type)

    def preprocess_image(self, image):
        return self.model.preprocess_image(image)

    def text_prefix(self, task_type):
        return self.model.text_prefix(task_type)

    def describe_preprocessing(self):
        return self.model.describe_preprocessing()

    @property
    def image_module(self) -> torch.nn.Module:
        return self.model.image_module

    @property
    def text_module(self) -> torch.nn.Module:
        return self.model.text_module

    # the forwards, on their runtimes
    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        self.require("image")
        return (self._image or self.model.image_rows)(pixels)

    def text_rows(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        self.require("text")
        return (self._text or self.model.text_rows)(ids)

    # A forward left on PyTorch fp32 is the model's own, whole: its embed_* (which a model may
    # define in its own way) runs, with the images per forward measured best.
    def embed_images(self, images, *, dimensionality=None, batch_size=None) -> torch.Tensor:
        if self._image is None:
            batch_size = batch_size or self.image_batch_size
            return self.model.embed_images(images, dimensionality=dimensionality, batch_size=batch_size)
        return super().embed_images(images, dimensionality=dimensionality, batch_size=batch_size)

    def embed_texts(self, texts, task_type="search_query", **options) -> torch.Tensor:
        if self._text is None:
            return self.model.embed_texts(texts, task_type, **options)
        return super().embed_texts(texts, task_type, **options)

    def describe(self) -> dict[str, Any]:
        """The model's own description, and what runs each forward and why (`image_runtime`,
        `image_runtime_reason`, `image_batch`, `text_runtime`, `text_runtime_reason`)."""
        out = self.model.describe()
        for modality, choice in self.choices.items():
            out[f"{modality}_runtime"] = choice.name
            out[f"{modality}_runtime_reason"] = choice.reason
            if modality == "image" and choice.batch:
                out["image_batch"] = choice.batch
        return out

    def runtime_names(self) -> dict[str, str]:
        """modality -> 'runtime-precision' now running it (after any fall-back)."""
        return {modality: c.name for modality, c in self.choices.items()}


def on_runtimes(
    model: Embedder,
    *,
    image: RuntimeSettings = AUTO,
    text: RuntimeSettings = EXACT,
    cache_dir: Path | None = None,
) -> ModelOnRuntimes:
    """`model` with each of its forwards on the runtime `image` / `text` ask for (auto: measured
    here, or read from the cache of an earlier measurement). A model already on the runtimes
    asked for is returned as it is (its compiled forwards are reused); one on others is taken back
    to its own forwards first."""
    if isinstance(model, ModelOnRuntimes):
        if model.asked == (image, text):
            return model
        model = model.model
    choices: dict[str, Choice] = {}
    image_forward = text_forward = None
    if "image" in model.modalities:
        choices["image"] = image_choice(model, image, cache_dir)
        image_forward = _image_forward(model, choices["image"])
    if "text" in model.modalities:
        choices["text"] = text_choice(model, text, cache_dir)
        text_forward = _text_forward(model, choices["text"])
    return ModelOnRuntimes(model, choices, image_forward, text_forward, (image, text))


def _choice(
    module: torch.nn.Module, probe, settings: RuntimeSettings, fingerprint: str, cache_dir: Path | None, what: str
) -> Choice:
    """The runtime for `module`'s forward: the one asked for, or auto's (measured on `probe`, or
    read from the cache of an earlier measurement keyed by `fingerprint`)."""
    if settings.pinned:
        return Choice(settings.runtime, settings.precision, "asked for")
    choice = choose(module, probe, model_fingerprint=fingerprint, settings=settings, cache_dir=cache_dir)
    log.info("%s on %s%s: %s", what, choice.name, " (cached)" if choice.cached else "", choice.reason)
    log.debug("%s measurements: %s", what, choice.describe_measurements())
    return choice


def image_choice(model: Embedder, settings: RuntimeSettings, cache_dir: Path | None = None) -> Choice:
    if settings.pinned:
        return Choice(settings.runtime, settings.precision, "asked for")
    try:
        module = model.image_module
    except NotImplementedError as e:
        return Choice("torch", "fp32", f"the only runtime for this image forward ({e or 'not one module'})")
    fingerprint = f"{model.kind}|{model.space}|{hash_state_dict(module.state_dict())}"
    probe = probe_images(model.preprocess_image)
    return _choice(module, probe, settings, fingerprint, cache_dir, f"{model.name} images")


def text_choice(model: Embedder, settings: RuntimeSettings, cache_dir: Path | None = None) -> Choice:
    """The text forward's runtime, or PyTorch when the model's text forward cannot be exported
    as one module."""
    if settings == EXACT:
        return Choice("torch", "fp32", "asked for")
    try:
        module = model.text_module
    except NotImplementedError as e:
        return Choice("torch", "fp32", f"the only runtime for this text forward ({e})")
    fingerprint = f"text|{model.kind}|{model.space}"  # the space's fingerprint covers the text weights
    probe = probe_text_inputs(model.tokenize, model.pad_id)
    return _choice(module, probe, settings, fingerprint, cache_dir, f"{model.name} text")


def module_forward(
    module: torch.nn.Module,
    probe: torch.Tensor,
    settings: RuntimeSettings = AUTO,
    *,
    fingerprint: str,
    cache_dir: Path | None = None,
    what: str = "forward",
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Choice]:
    """A module's forward (pixels -> rows: a frozen backbone, a frozen tower) on the runtime
    `settings` ask for, with the PyTorch fall-back, and the choice. `probe` is a batch of real
    inputs (auto measures on it); `fingerprint` names the module's weights for the cache."""
    choice = _choice(module, probe, settings, fingerprint, cache_dir, what)
    exact = build_forward(module, probe, "torch", "fp32")
    if choice.name == "torch-fp32":
        return exact, choice
    fast = _fast(module, probe, probe, choice)
    return (exact if fast is None else guarded(fast, exact, choice, what)), choice


def _image_forward(model: Embedder, choice: Choice) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The image forward on the chosen runtime (None: the model's own PyTorch one)."""
    if choice.name == "torch-fp32":
        return None
    from PIL import Image

    example = torch.stack([model.preprocess_image(Image.new("RGB", (64, 64)))] * 2)
    fast = _fast(model.image_module, example, lambda: probe_images(model.preprocess_image, n=4), choice)
    return None if fast is None else guarded(fast, model.image_rows, choice, f"{model.name} image")


def _text_forward(model: Embedder, choice: Choice) -> Callable[[Sequence[Sequence[int]]], torch.Tensor] | None:
    """The text forward on the chosen runtime (None: the model's own PyTorch one)."""
    if choice.name == "torch-fp32":
        return None
    example = pad_ids(model.tokenize(["an example text", "a text"], "search_document"), model.pad_id)
    fast = _fast(model.text_module, example, lambda: probe_text_inputs(model.tokenize, model.pad_id), choice)
    if fast is None:
        return None
    return guarded(lambda ids: fast(*pad_ids(ids, model.pad_id)), model.text_rows, choice, f"{model.name} text")


def _fast(module: torch.nn.Module, example, probe, choice: Choice):
    """`module` on the chosen runtime, or None (PyTorch runs) when the runtime cannot build it
    here, or, for a runtime asked for by name (auto's choice was checked when it was measured),
    when its rows stray below the cosine bound on a probe batch or a batch of another shape: a
    faster runtime is never worth a model that does not load, or one that answers wrongly.
    `probe` is the probe batch, or a function that makes it."""
    try:
        fast = build_forward(module, example, choice.runtime, choice.precision)
    except Exception as e:  # noqa: BLE001 - any failure means: run with PyTorch
        log.warning("%s could not be built (%s: %s); running PyTorch fp32", choice.name, type(e).__name__, e)
        choice.fell_back(f"could not be built ({type(e).__name__})")
        return None
    if choice.measurements:
        return fast
    probe = as_inputs(probe() if callable(probe) else probe)
    exact = build_forward(module, probe, "torch", "fp32")
    try:
        cosine = min(
            float(F.cosine_similarity(fast(*inputs).float(), exact(*inputs), dim=-1).min())
            for inputs in (probe, other_shape(probe))
        )
    except Exception as e:  # noqa: BLE001 - e.g. a graph that kept a shape of the example
        log.warning("%s failed on the probe (%s: %s); running PyTorch fp32", choice.name, type(e).__name__, e)
        choice.fell_back(f"failed on the probe ({type(e).__name__})")
        return None
    if cosine < MIN_COSINE:
        log.warning("%s strays from PyTorch fp32 (cosine %.5f); running PyTorch fp32", choice.name, cosine)
        choice.fell_back(f"strays from PyTorch fp32 (cosine {cosine:.5f} on the probe, below {MIN_COSINE})")
        return None
    return fast


def guarded(fast: Callable, slow: Callable, choice: Choice, what: str) -> Callable:
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
                    "%s forward on %s failed (%s: %s); running PyTorch fp32 from now on",
                    what,
                    choice.name,
                    type(e).__name__,
                    e,
                )
                choice.fell_back(f"failed ({type(e).__name__})")
                state["fast"] = None
        return slow(items)

    return run


def probe_images(preprocess: Callable, n: int = 8) -> torch.Tensor:
    """A probe batch with what images have: flat colour, gradients, edges and noise, run through
    the model's own preprocessing."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = Image.new("RGB", (256, 256), tuple(int(c) for c in rng.integers(0, 256, 3)))
        elif kind == 1:
            ramp = np.linspace(0, 255, 256, dtype=np.uint8)
            img = Image.fromarray(
                np.stack(
                    [np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 128, np.uint8)], -1
                )
            )
        elif kind == 2:
            img = Image.new("RGB", (256, 192), "white")
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = (int(v) for v in rng.integers(0, 160, 2))
                w, h = (int(v) for v in rng.integers(16, 96, 2))
                draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        else:
            img = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        images.append(preprocess(img))
    return torch.stack(images)


PROBE_TEXTS = [
    "a red heart",
    "search for a photo of a dog playing in the snow",
    "Grüße aus Köln",
    "the quarterly report shows revenue growth in every region except the north, where supply "
    "problems delayed the launch of two products until the following year",
    "cat",
    "how do I reset my password if I no longer have access to the email address on the account?",
    "a bowl of ramen with a soft boiled egg, spring onions and chili oil on a wooden table",
    " ".join(["a long passage about rivers, cities and the night sky"] * 12),
]


def probe_text_inputs(
    tokenize: Callable[[list[str], str], list[list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of texts from 1 to ~130 words, as (input_ids, attention_mask)."""
    return pad_ids(tokenize(PROBE_TEXTS * 2, "search_document"), pad_id)
