"""The public collection search: `collection.search(...)`, in this process or through a server.

    from latentspace import collection
    hits = collection.search("photos", text="a red bicycle at night", k=10)        # local
    hits = collection.search("photos", image="query.jpg", base_url="http://host:8000")  # remote

Exactly one of `text`, `image` (a path, bytes or PIL image) or `like` (an item id) is the query.
Each result is a dict: id, score, path, url, caption, width, height. Local mode opens the
collection (a directory, or a name under artifacts/collections) and embeds the query with the
collection's own model (or `model=`, which must be in the collection's space); remote mode asks a
`latentspace serve --collection ...` server (`base_url` / `api_key` default to
LATENTSPACE_BASE_URL / LATENTSPACE_API_KEY, as for `embed`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from latentspace.inputs import is_remote

_lock = threading.Lock()
_opened: dict[str, Any] = {}


def search(
    collection: str | os.PathLike,
    *,
    text: str | None = None,
    image: Any = None,
    like: str | None = None,
    k: int = 10,
    min_score: float | None = None,
    path_prefix: str | None = None,
    caption_contains: str | None = None,
    model: str | None = None,
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    if sum(q is not None for q in (text, image, like)) != 1:
        raise ValueError("give exactly one query: text=, image= or like=")
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).search_collection(
            str(collection),
            text=text,
            image=image,
            like=like,
            k=k,
            min_score=min_score,
            path_prefix=path_prefix,
            caption_contains=caption_contains,
        )
    from latentspace import embed
    from latentspace.collections import Collection, Filters

    key = str(collection)
    with _lock:
        if key not in _opened:
            _opened[key] = Collection.open(key)
        opened = _opened[key]
    filters = Filters(path_prefix=path_prefix, caption_contains=caption_contains)
    if like is not None:
        hits = opened.search_like(like, k, min_score, filters)
    else:
        query_model = embed.load(model or opened.manifest.model)
        if text is not None:
            hits = opened.search_text(query_model, text, k, min_score, filters)
        else:
            hits = opened.search_image(query_model, image, k, min_score, filters)
    keys = ("id", "score", "path", "url", "caption", "width", "height")
    return [{key: getattr(hit, key) for key in keys} for hit in hits]
