"""The public embedding API: `embed.text(...)` and `embed.image(...)`, shaped like Nomic's client.

    from latentspace import embed
    out = embed.image(["cat.png"], model="artifacts/quickstart/model")
    out["embeddings"]  # list of lists of floats, L2-normalised

Local mode runs the model in this process (no key, no server). `model` is a latentspace model
directory (images and text) or a text model (`builtin:all-MiniLM-L6-v2` or a Hugging Face /
sentence-transformers directory; text only). Loaded models are kept for reuse.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig
from latentspace.models.model_dir import is_model_dir
from latentspace.models.paired import PairedModel
from latentspace.models.text_tower import TASK_TYPES, TextTower

_lock = threading.Lock()
_loaded: dict[str, PairedModel | TextTower] = {}


def _resolve(model: str | os.PathLike | None) -> str:
    model = model if model is not None else os.environ.get("LATENTSPACE_MODEL")
    if not model:
        raise ValueError("no model given: pass model=<model directory> or set LATENTSPACE_MODEL")
    return str(model)


def load(model: str | os.PathLike | None = None) -> PairedModel | TextTower:
    """The loaded model for a path (cached per process)."""
    key = _resolve(model)
    with _lock:
        if key not in _loaded:
            if key != BUILTIN_TEXT_MODEL and is_model_dir(key):
                _loaded[key] = PairedModel.load(key)
            elif key == BUILTIN_TEXT_MODEL or Path(key).expanduser().is_dir():
                _loaded[key] = TextTower(TextTowerConfig(path=key))
            else:
                raise FileNotFoundError(
                    f"model not found: {key!r}. Give a latentspace model directory (e.g. artifacts/quickstart/model "
                    f"after `make demo`), a text model directory, or {BUILTIN_TEXT_MODEL!r}.")
        return _loaded[key]


def _check_mode(inference_mode: str) -> None:
    if inference_mode != "local":
        raise ValueError(f"inference_mode={inference_mode!r} is not available; this version supports 'local'")


def _response(vectors, model: str, space: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"embeddings": vectors.tolist(), "usage": usage, "model": model, "space": space}


def text(texts: Sequence[str], *, model: str | os.PathLike | None = None, task_type: str = "search_document",
         dimensionality: int | None = None, inference_mode: str = "local") -> dict[str, Any]:
    """Embed texts. task_type: search_document | search_query | classification | clustering."""
    _check_mode(inference_mode)
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings (wrap a single text in a list)")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    name = _resolve(model)
    m = load(name)
    tower = m.text if isinstance(m, PairedModel) else m
    vectors = tower.encode(list(texts), task_type, dimensionality=dimensionality)
    tokens = tower.count_tokens(list(texts), task_type) if texts else 0
    return _response(vectors, name, str(tower.space), {"prompt_tokens": tokens, "total_tokens": tokens})


def image(images: Sequence[Any], *, model: str | os.PathLike | None = None, dimensionality: int | None = None,
          inference_mode: str = "local") -> dict[str, Any]:
    """Embed images given as file paths, bytes or PIL images (any mode)."""
    _check_mode(inference_mode)
    if isinstance(images, (str, bytes, os.PathLike)):
        raise TypeError("images must be a list (wrap a single image in a list)")
    name = _resolve(model)
    m = load(name)
    if not isinstance(m, PairedModel):
        raise ValueError(f"{name!r} is a text model; image embedding needs a latentspace vision model directory")
    vectors = m.embed_images(list(images), dimensionality=dimensionality)
    return _response(vectors, name, m.space, {"prompt_tokens": 0, "total_tokens": 0})
