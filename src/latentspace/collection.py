"""The public collection search: `collection.search(...)`, in this process or through a server.

    from latentspace import collection
    hits = collection.search("photos", text="a red bicycle at night", k=10)        # local
    hits = collection.search("photos", image="query.jpg", base_url="http://host:8000")  # remote

Exactly one of `text`, `image` (a path, bytes or PIL image), `like` (an item id) or `terms` is the
query. `terms` is a weighted query: a list of {"text": ...}, {"like": ID} or {"image": ...} dicts,
each with an optional "weight" (default 1; negative pushes results away); the query is the
normalised weighted sum of the terms' unit vectors (at most one image term through a server).
Each result is a dict: id, score (cosine), relevance (0..1, the share of generic queries' best
matches in the collection it beats; None for a collection without calibration), match (whether
it reaches `min_relevance`), path, url, caption, width, height. The list (a `SearchResults`) also
has `matches`: how many results reach `min_relevance` (default for a text query:
relevance.DEFAULT_MIN_RELEVANCE; image, item and weighted queries are not cut unless one is
given). When none does, `matches` is 0 and the list holds the nearest results anyway, each with
match False: nothing in the collection looks like the query. Local mode opens the
collection (a directory, or a name under artifacts/collections) and embeds the query with the
collection's own model (or `model=`, which must be in the collection's space); with
`store="postgresql://USER@HOST/DB"` it is the collection of that name in PostgreSQL (the same
answers: docs/collections.md, "Stores"). Remote mode asks a
`latentspace serve --collection ...` server (`base_url` / `api_key` default to
LATENTSPACE_BASE_URL / LATENTSPACE_API_KEY, as for `embed`).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from latentspace.inputs import is_remote

if TYPE_CHECKING:
    from latentspace.client import SearchResults

_lock = threading.Lock()
_opened: dict[str, Any] = {}


def search(
    collection: str | os.PathLike,
    *,
    text: str | None = None,
    image: Any = None,
    like: str | None = None,
    terms: list[dict[str, Any]] | None = None,
    k: int = 10,
    min_score: float | None = None,
    path_prefix: str | None = None,
    caption_contains: str | None = None,
    min_relevance: float | None = None,
    model: str | None = None,
    store: str | None = None,
    inference_mode: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> SearchResults:
    if sum(q is not None for q in (text, image, like, terms)) != 1:
        raise ValueError("give exactly one query: text=, image=, like= or terms=")
    if is_remote(inference_mode, base_url):
        from latentspace.client import client_for

        return client_for(base_url, api_key, timeout).search_collection(
            str(collection),
            text=text,
            image=image,
            like=like,
            terms=terms,
            k=k,
            min_score=min_score,
            path_prefix=path_prefix,
            caption_contains=caption_contains,
            min_relevance=min_relevance,
        )
    from latentspace import embed
    from latentspace.collections import Filters, open_collection

    key = str(collection) if store is None else f"{collection}@{store}"
    with _lock:
        if key not in _opened:
            _opened[key] = open_collection(collection, store)
        opened = _opened[key]
    filters = Filters(path_prefix=path_prefix, caption_contains=caption_contains)
    if terms is not None:
        needs_model = any("like" not in term for term in terms)
        query_model = embed.load(model or opened.manifest.model) if needs_model else None
        hits = opened.search_terms(query_model, [_term(term) for term in terms], k, min_score, filters, min_relevance)
    elif like is not None:
        hits = opened.search_like(like, k, min_score, filters, min_relevance)
    else:
        query_model = embed.load(model or opened.manifest.model)
        if text is not None:
            hits = opened.search_text(query_model, text, k, min_score, filters, min_relevance)
        else:
            hits = opened.search_image(query_model, image, k, min_score, filters, min_relevance)
    from latentspace.client import SearchResults

    keys = ("id", "score", "relevance", "match", "path", "url", "caption", "width", "height")
    return SearchResults([{key: getattr(hit, key) for key in keys} for hit in hits], hits.matches)


def _term(term: dict[str, Any]):
    """A {"text" | "like" | "image": value, "weight": w} dict as a collections Term."""
    from latentspace.collections.search import Term

    kinds = [kind for kind in ("text", "like", "image") if kind in term]
    unknown = set(term) - {"text", "like", "image", "weight"}
    if len(kinds) != 1 or unknown:
        raise ValueError(
            'a term is one of {"text": ...}, {"like": ID} or {"image": ...} with an optional "weight", '
            f"not {term!r}"
        )
    return Term(kinds[0], term[kinds[0]], float(term.get("weight", 1.0)))  # type: ignore[arg-type]
