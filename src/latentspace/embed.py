"""The public embedding API: `embed.text(...)` and `embed.image(...)`, shaped like Nomic's client.

    from latentspace import embed
    out = embed.image(["cat.png"], model="artifacts/quickstart/model")
    out["embeddings"]  # list of lists of floats, L2-normalised

Local mode runs the model in this process (no key, no server). Remote mode sends the inputs to
a `latentspace serve` server (see latentspace.client) and returns the same shape. `model` is any
model spec (models/load.py: a latentspace model directory, builtin:all-MiniLM-L6-v2, a text model
directory, Nomic's published directories, a Hugging Face CLIP directory, ...). Loaded models are
kept for reuse.

In local mode the forwards run on the runtime layer's choice (latentspace.runtime): images by
default on the fastest runtime measured on this machine within cosine 0.999 of PyTorch fp32
(`runtime="auto"`), texts on PyTorch fp32, so a locked text tower's vectors are its text model's
own, bit for bit. `runtime="torch", precision="fp32"` pins the reference for images too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from latentspace.inputs import TASK_TYPES, check_texts, is_remote

if TYPE_CHECKING:  # the model stack (torch) is imported only when a model runs here
    from latentspace.models.embedder import Embedder

_lock = threading.Lock()
_loaded: dict[str, Embedder] = {}  # spec -> the model
_on_runtimes: dict[tuple[str, str, str, str], Embedder] = {}  # (spec, modality, runtime, precision) -> it on them


def _resolve(model: str | os.PathLike | None) -> str:
    model = model if model is not None else os.environ.get("LATENTSPACE_MODEL")
    if not model:
        raise ValueError("no model given: pass model=<model spec> or set LATENTSPACE_MODEL")
    return str(model)


def load(model: str | os.PathLike | None = None) -> Embedder:
    """The loaded model for a spec (cached per process), with its own PyTorch forwards."""
    from latentspace.models.load import load as load_spec

    key = _resolve(model)
    with _lock:
        if key not in _loaded:
            _loaded[key] = load_spec(key)
        return _loaded[key]


def _running(model: str, modality: str, runtime: str, precision: str) -> Embedder:
    """The model for a spec with its `modality` forward on `runtime` at `precision` (the other
    forward on PyTorch fp32), cached per process: auto measures once per process and model."""
    from latentspace.runtime import EXACT, RuntimeSettings, on_runtimes

    settings = RuntimeSettings(runtime=runtime, precision=precision)  # type: ignore[arg-type]
    key = (model, modality, runtime, precision)
    base = load(model)
    with _lock:
        if key not in _on_runtimes:
            _on_runtimes[key] = on_runtimes(
                base, image=settings if modality == "image" else EXACT, text=settings if modality == "text" else EXACT
            )
        return _on_runtimes[key]


def _response(vectors, model: str, m: Embedder, modality: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "embeddings": vectors.tolist(),
        "usage": usage,
        "model": model,
        "space": m.space,
        "runtime": m.runtime_names()[modality],  # what made the vectors
    }


def text(
    texts: Sequence[str],
    *,
    model: str | os.PathLike | None = None,
    task_type: str = "search_document",
    dimensionality: int | None = None,
    long_text_mode: str = "truncate",
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    runtime: str = "torch",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Embed texts. task_type: search_document | search_query | classification | clustering.
    long_text_mode: 'truncate' at the model's token limit, or 'mean' over pieces that fit.

    Local mode (the default) runs `model` in this process, its text forward on `runtime` at
    `precision` (PyTorch fp32 by default: the text model's own vectors, bit for bit; "auto"
    measures). Remote mode (`inference_mode="remote"`, or a `base_url`) sends the texts to a
    server; `base_url` and `api_key` default to LATENTSPACE_BASE_URL / LATENTSPACE_API_KEY, and
    `model` is the server's name for it."""
    texts = check_texts(texts)
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if long_text_mode not in ("truncate", "mean"):
        raise ValueError(f"long_text_mode must be 'truncate' or 'mean', got {long_text_mode!r}")
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).text(
            texts,
            model=None if model is None else str(model),
            task_type=task_type,
            dimensionality=dimensionality,
            long_text_mode=long_text_mode,
        )
    name = _resolve(model)
    m = _running(name, "text", runtime, precision)
    prepared = m.prepare_texts(texts, task_type, long_text_mode)  # type: ignore[arg-type]
    vectors = m.rows_for(prepared, dimensionality=dimensionality)
    tokens = prepared.token_count
    return _response(vectors, name, m, "text", {"prompt_tokens": tokens, "total_tokens": tokens})


def image(
    images: Sequence[Any],
    *,
    model: str | os.PathLike | None = None,
    dimensionality: int | None = None,
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    runtime: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Embed images given as file paths, bytes or PIL images (any mode); in remote mode also
    http(s) URLs, which the server fetches (if it was started with --allow-urls).

    Local mode runs the image forward on `runtime` at `precision`: "auto" takes the fastest
    measured on this machine within cosine 0.999 of PyTorch fp32 (measured on first use, then
    cached); "torch" and "fp32" give the reference vectors."""
    if isinstance(images, (str, bytes, os.PathLike)):
        raise TypeError("images must be a list (wrap a single image in a list)")
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).image(
            list(images), model=None if model is None else str(model), dimensionality=dimensionality
        )
    name = _resolve(model)
    m = _running(name, "image", runtime, precision)
    vectors = m.embed_images(list(images), dimensionality=dimensionality)
    return _response(vectors, name, m, "image", {"prompt_tokens": 0, "total_tokens": 0})
