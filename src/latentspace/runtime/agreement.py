"""Reference agreement: how close a model on its chosen runtimes stays to PyTorch fp32, measured on
a small reference set shipped in the package (src/latentspace/reference/: a few small PNGs drawn
by scripts/draw_reference_set.py, and texts.json).

`reference_agreement(model)` embeds the set with the model's chosen forwards and with the model's
own PyTorch fp32 forwards, and reports per modality the lowest cosine between the two rows of an
item. The server does it at start-up for every model it serves and publishes the result in
/v1/models and /metrics, so a runtime that drifts (a new OpenVINO, an int8 path on another CPU)
is visible, not silent. Auto's choice was checked against the same bound when it was measured,
but on synthetic probes and possibly on another day's libraries (the choice is cached); this
check runs on every start.

When a forward runs on PyTorch fp32 itself, both sides are the same code: the cosine is 1.0 by
construction (still computed) and `reference` says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from latentspace.models.embedder import Embedder, finish
from latentspace.runtime.forwards import ModelOnRuntimes

log = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"


@cache
def reference_images() -> tuple[bytes, ...]:
    """The reference PNGs' bytes, in name order (decoded by each model's own path)."""
    paths = sorted(REFERENCE_DIR.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no reference images in {REFERENCE_DIR}: the package is incomplete; reinstall it")
    return tuple(p.read_bytes() for p in paths)


@cache
def reference_texts() -> tuple[str, ...]:
    return tuple(json.loads((REFERENCE_DIR / "texts.json").read_text())["texts"])


@dataclass
class Agreement:
    """One modality's agreement with PyTorch fp32 on the reference set."""

    runtime: str
    precision: str
    min_cosine: float | None
    items: int
    reference: bool  # the forward runs on PyTorch fp32 itself: 1.0 by construction
    error: str | None = None  # the check could not run (the model still serves)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.error is None:
            del out["error"]
        return out


def _inputs(model: Embedder, modality: str) -> Any:
    """The reference set as the model's forward takes it, prepared once for both sides: pixels
    through the model's own decoding and preprocessing, or texts as token ids."""
    if modality == "image":
        from latentspace.data.images import load_image

        return torch.stack([model.preprocess_image(load_image(data)) for data in reference_images()])
    return model.prepare_texts(list(reference_texts()), "search_query")


def _rows(model: Embedder, modality: str, inputs: Any) -> torch.Tensor:
    """Unit rows from the forward the server runs for `modality` (image_rows; text_rows_by_length)."""
    if modality == "image":
        return finish(model.image_rows(inputs))
    return model.rows_for(inputs)


def reference_agreement(model: ModelOnRuntimes) -> dict[str, Agreement]:
    """modality -> the agreement of `model`'s chosen forward with its PyTorch fp32 forward."""
    out: dict[str, Agreement] = {}
    for modality in model.modalities:
        choice = model.choices.get(modality)
        runtime, precision = (choice.runtime, choice.precision) if choice else ("torch", "fp32")
        try:
            with torch.inference_mode():
                inputs = _inputs(model, modality)
                served = _rows(model, modality, inputs)  # first: a runtime that fails here falls back, and says so
                exact = _rows(model.model, modality, inputs)
            cosine = float((served.float() * exact.float()).sum(dim=-1).min())
            out[modality] = Agreement(
                runtime, precision, round(cosine, 6), len(served), (runtime, precision) == ("torch", "fp32")
            )
        except Exception as e:  # noqa: BLE001 - a check that cannot run is reported, never fatal
            out[modality] = Agreement(runtime, precision, None, 0, False, f"{type(e).__name__}: {e}")
            name = getattr(model, "name", type(model).__name__)
            log.warning("%s: reference agreement for %s could not be measured: %s", name, modality, e)
    return out
