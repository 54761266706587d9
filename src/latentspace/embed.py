"""The public embedding API: `embed.text(...)` and `embed.image(...)`, shaped like Nomic's client.

    from latentspace import embed
    out = embed.image(["cat.png"], model="artifacts/quickstart/model")
    out["embeddings"]  # list of lists of floats, L2-normalised

Local mode runs the model in this process (no key, no server). Remote mode sends the inputs to
a `latentspace serve` server (see latentspace.client) and returns the same shape. `model` is any
model spec (models/load.py: a latentspace model directory, builtin:all-MiniLM-L6-v2, a text model
directory, Nomic's published directories, a Hugging Face CLIP directory, ...). Loaded models are
kept for reuse.
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
_loaded: dict[str, Embedder] = {}


def _resolve(model: str | os.PathLike | None) -> str:
    model = model if model is not None else os.environ.get("LATENTSPACE_MODEL")
    if not model:
        raise ValueError("no model given: pass model=<model spec> or set LATENTSPACE_MODEL")
    return str(model)


def load(model: str | os.PathLike | None = None) -> Embedder:
    """The loaded model for a spec (cached per process)."""
    from latentspace.models.load import load as load_spec

    key = _resolve(model)
    with _lock:
        if key not in _loaded:
            _loaded[key] = load_spec(key)
        return _loaded[key]


def _response(vectors, model: str, space: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"embeddings": vectors.tolist(), "usage": usage, "model": model, "space": space}


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
) -> dict[str, Any]:
    """Embed texts. task_type: search_document | search_query | classification | clustering.
    long_text_mode: 'truncate' at the model's token limit, or 'mean' over pieces that fit.

    Local mode (the default) runs `model` in this process. Remote mode (`inference_mode="remote"`,
    or a `base_url`) sends the texts to a server; `base_url` and `api_key` default to
    LATENTSPACE_BASE_URL / LATENTSPACE_API_KEY, and `model` is the server's name for it."""
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
    m = load(name)
    prepared = m.prepare_texts(texts, task_type, long_text_mode)  # type: ignore[arg-type]
    vectors = m.rows_for(prepared, dimensionality=dimensionality)
    tokens = prepared.token_count
    return _response(vectors, name, m.space, {"prompt_tokens": tokens, "total_tokens": tokens})


def image(
    images: Sequence[Any],
    *,
    model: str | os.PathLike | None = None,
    dimensionality: int | None = None,
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Embed images given as file paths, bytes or PIL images (any mode); in remote mode also
    http(s) URLs, which the server fetches (if it was started with --allow-urls)."""
    if isinstance(images, (str, bytes, os.PathLike)):
        raise TypeError("images must be a list (wrap a single image in a list)")
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).image(
            list(images), model=None if model is None else str(model), dimensionality=dimensionality
        )
    name = _resolve(model)
    m = load(name)
    vectors = m.embed_images(list(images), dimensionality=dimensionality)
    return _response(vectors, name, m.space, {"prompt_tokens": 0, "total_tokens": 0})
