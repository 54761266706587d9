"""The public embedding API: `embed.text(...)`, `embed.image(...)` and `embed.mixed(...)` (texts
and images in one ordered list), shaped like Nomic's client.

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

from latentspace.inputs import TASK_TYPES, DataUrlError, check_text, check_texts, is_data_url, is_remote, parse_data_url

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
    """Embed images given as file paths, bytes, PIL images (any mode) or base64 data URLs
    (data:image/png;base64,...); in remote mode also http(s) URLs, which the server fetches (if it
    was started with --allow-urls).

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
    vectors = m.embed_images([_local_image(i, img) for i, img in enumerate(images)], dimensionality=dimensionality)
    return _response(vectors, name, m, "image", {"prompt_tokens": 0, "total_tokens": 0})


def _local_image(index: int, image: Any) -> Any:
    """An image as the local forward reads it: a data URL becomes the bytes it carries; paths,
    bytes and PIL images stay as they are."""
    if is_data_url(image):
        try:
            return parse_data_url(image)
        except DataUrlError as e:
            raise ValueError(f"image {index}: {e}") from None
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise ValueError(
            f"image {index}: http(s) URLs are fetched by a server, not here: pass base_url= (remote mode) "
            "or download the image first"
        )
    return image


def mixed(
    items: Sequence[Any],
    *,
    model: str | os.PathLike | None = None,
    task_type: str = "search_document",
    dimensionality: int | None = None,
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    text_runtime: str = "torch",
    text_precision: str = "fp32",
    image_runtime: str = "auto",
    image_precision: str = "auto",
) -> dict[str, Any]:
    """Embed texts and images given in one ordered list; `embeddings[i]` answers `items[i]`, and
    every vector is the one `text` or `image` gives for that item alone.

    How an item is told apart, by its Python type, never by guessing from a string's content:

    - a `str` is a text, always (even one that looks like a file name or a URL);
    - a PIL image, a `pathlib.Path` (any os.PathLike) or `bytes` is an image;
    - `{"type": "text", "text": "..."}` is a text;
    - `{"type": "image", "image": x}` is an image, x anything `image` takes (a path string, bytes,
      a PIL image, a data URL, or an http(s) URL in remote mode);
    - `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` is an image too
      (OpenAI's spelling, as /v1/embeddings takes it).

    Texts are embedded with `task_type`. Local mode runs texts on `text_runtime` at
    `text_precision` (PyTorch fp32 by default, as `text`) and images on `image_runtime` at
    `image_precision` ("auto" by default, as `image`). Remote mode (`inference_mode="remote"` or a
    `base_url`) sends the list to the server's /v1/embeddings in one or a few requests.
    `usage` counts text tokens and images."""
    if isinstance(items, (str, bytes, dict)):
        raise TypeError("items must be a list (wrap a single text or image in a list)")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    kinds = [_mixed_item(i, item) for i, item in enumerate(items)]
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).mixed(
            kinds, model=None if model is None else str(model), task_type=task_type, dimensionality=dimensionality
        )
    import torch

    name = _resolve(model)
    texts = [(i, value) for i, (kind, value) in enumerate(kinds) if kind == "text"]
    images = [(i, _local_image(i, value)) for i, (kind, value) in enumerate(kinds) if kind == "image"]
    for kind, present in (("text", texts), ("image", images)):
        if present:
            load(name).require(kind)  # type: ignore[arg-type]  # a ModalityError before any runtime is built
    # The same models, on the same runtimes, as `text` and `image` would use: the same vectors.
    text_model = _running(name, "text", text_runtime, text_precision) if texts else None
    image_model = _running(name, "image", image_runtime, image_precision) if images else None
    rows = torch.empty(len(kinds), dimensionality or load(name).dim)
    tokens = 0
    if text_model is not None:
        prepared = text_model.prepare_texts([t for _, t in texts], task_type)  # type: ignore[arg-type]
        rows[[i for i, _ in texts]] = text_model.rows_for(prepared, dimensionality=dimensionality)
        tokens = prepared.token_count
    if image_model is not None:
        rows[[i for i, _ in images]] = image_model.embed_images([x for _, x in images], dimensionality=dimensionality)
    return {
        "embeddings": rows.tolist(),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": len(images)},
        "model": name,
        "space": load(name).space,
        "runtime": _runtime_names(text_model, image_model),
    }


def _runtime_names(text_model: Embedder | None, image_model: Embedder | None) -> str | None:
    """What made the vectors of a mixed call: one runtime's name, or each side's when they differ
    ("torch-fp32 (text), openvino-int8 (image)", as the server says it)."""
    used = {kind: m.runtime_names()[kind] for kind, m in (("text", text_model), ("image", image_model)) if m}
    if len(set(used.values())) <= 1:
        return next(iter(used.values()), None)
    return ", ".join(f"{runtime} ({kind})" for kind, runtime in used.items())


def _mixed_item(index: int, item: Any) -> tuple[str, Any]:
    """One item of `mixed` -> ("text", str) or ("image", what `image` takes); see `mixed` for the rules."""
    if isinstance(item, str):
        check_text(item, index)
        return "text", item
    if isinstance(item, dict):
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            check_text(item["text"], index)
            return "text", item["text"]
        if kind == "image" and item.get("image") is not None:
            return "image", item["image"]
        image_url = item.get("image_url")
        if kind == "image_url" and isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
            return "image", image_url["url"]
        raise ValueError(
            f"input {index}: a dict must be {{'type': 'text', 'text': str}}, {{'type': 'image', 'image': ...}} "
            f"or {{'type': 'image_url', 'image_url': {{'url': str}}}}; got keys {sorted(map(str, item))}"
        )
    if isinstance(item, (bytes, bytearray, memoryview, os.PathLike)) or _is_pil_image(item):
        return "image", item
    raise TypeError(
        f"input {index}: {type(item).__name__} is neither a text nor an image; give a str (a text), a PIL image, "
        "a pathlib.Path or bytes (an image), or a typed dict (see embed.mixed)"
    )


def _is_pil_image(item: Any) -> bool:
    from PIL import Image  # in the light install too

    return isinstance(item, Image.Image)
