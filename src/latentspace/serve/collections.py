"""Collections on the server: search by text, by uploaded image or by item, list, and thumbnails.
Their bodies are typed in serve/schemas.py.

    GET  /v1/collections                               each collection: space, model, counts
    POST /v1/collections/{name}/search                 JSON: {text | like | terms, k, min_score, min_relevance, filters}
    POST /v1/collections/{name}/search/image           multipart: an `image` file part (+ terms, the same fields)
    GET  /v1/collections/{name}/items/{id}             an item's metadata
    GET  /v1/collections/{name}/items/{id}/thumbnail   a small JPEG of the item (`size` px, at most 512)

A collection is searched with a served model of its latent space: one the server serves anyway
(the first with the same space identity and an image side), or else the model its manifest
names, loaded as one more served model (`collection:NAME`). Queries go through that model's
inference worker like any embedding request, so they are batched with the rest of the traffic.
A query of several weighted terms (texts, items, an uploaded image) embeds each term that way and
searches with the normalised weighted sum of their unit vectors (collections.search.weighted_query).

Every result has `score` (cosine) and `relevance` (0..1, collections/relevance.py); the answer's
`matches` counts the results that reach min_relevance (default: the collection's bar for a query
of one text, none for the rest). With `matches` 0 the results are the nearest items all the same,
each with `match` false, so a client that only reads `results` and `score` keeps working.

Thumbnails are read from what the collection recorded for an item id (its file, or its bytes in
a local shard), checked against the recorded sha256; nothing from the request is ever used as a
path. The same auth, limits and error shape as the embedding routes apply.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response

from latentspace.models.embedder import finish
from latentspace.serve.errors import ApiError, retry_later
from latentspace.serve.request_items import require_modality
from latentspace.serve.schemas import (
    SEARCH_IMAGE_FORM,
    CollectionInfo,
    CollectionList,
    ItemResponse,
    SearchFilters,
    SearchImageFields,
    SearchRequest,
    SearchResponse,
    SearchResult,
    SearchTerm,
)
from latentspace.serve.settings import ServeSettings

log = logging.getLogger(__name__)

THUMBNAIL_MAX = 512
THUMBNAIL_CACHE = 1024  # thumbnails kept in memory (a page shows a few dozen at a time)


def parse_collection_arg(arg: str) -> tuple[str | None, str]:
    """'NAME=DIR' or 'DIR' (or a NAME under artifacts/collections), or 'NAME=postgresql://...' (the
    collection NAME in that database) -> (name or None, where)."""
    name, sep, where = arg.partition("=")
    if sep and name and "/" not in name:
        return name, where
    return None, arg


@dataclass
class ServedCollection:
    """One collection and the served model its queries run on."""

    name: str
    where: str
    collection: Any = None  # latentspace.collections.Collection, once opened
    slot_name: str | None = None
    error: str | None = None
    thumbnails: OrderedDict = field(default_factory=OrderedDict)

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "ready" if self.collection is not None and self.slot_name is not None else "loading"


class CollectionSet:
    """The server's collections, opened after its models load (registry.after_load)."""

    def __init__(self, settings: ServeSettings):
        from latentspace.collections.postgres import is_store_url

        self.items: dict[str, ServedCollection] = {}
        for arg in settings.collections:
            name, where = parse_collection_arg(arg)
            if name is None and is_store_url(where):
                raise ValueError(f"name the collection in the database: --collection NAME={where.split('@')[-1]}")
            name = name or Path(where).name
            if name in self.items:
                raise ValueError(f"two collections are named {name!r}; name them with NAME=DIR")
            self.items[name] = ServedCollection(name, where)

    def open_all(self, registry) -> None:
        """Open every collection and find (or load) a served model of its space for queries."""
        from latentspace.collections import open_collection
        from latentspace.collections.postgres import is_store_url

        for served in self.items.values():
            try:
                served.collection = (
                    open_collection(served.name, served.where)
                    if is_store_url(served.where)
                    else open_collection(served.where)
                )
                served.slot_name = registry.query_model_for(served.collection.manifest, f"collection:{served.name}")
                log.info(
                    "collection %s: %d items in %s, queries on model %s",
                    served.name,
                    len(served.collection),
                    served.collection.space,
                    served.slot_name,
                )
            except Exception as e:  # noqa: BLE001 - reported by /health, /v1/collections and every request
                served.error = f"{type(e).__name__}: {e}"
                from latentspace.collections.postgres import redact  # no password in the log

                log.error("could not open collection %s (%s): %s", served.name, redact(served.where), served.error)

    def get(self, name: str) -> ServedCollection:
        served = self.items.get(name)
        if served is None:
            known = ", ".join(sorted(self.items)) or "none"
            raise ApiError(404, f"unknown collection {name!r}; this server has {known} (GET /v1/collections)")
        if served.status == "loading":
            raise retry_later(503, f"collection {name!r} is still loading; retry shortly", 1)
        if served.status == "failed":
            raise ApiError(503, f"collection {name!r} could not be opened: {served.error}")
        return served

    @property
    def healthy(self) -> bool:
        return all(s.status == "ready" for s in self.items.values())


def add_collection_routes(
    app: FastAPI,
    *,
    collections: CollectionSet,
    registry,
    settings: ServeSettings,
    require_key: Callable,
    errors: Callable,
    decode_pool: ThreadPoolExecutor,
    embed_query_text: Callable,
    embed_query_image: Callable,
    read_image_form: Callable,
) -> None:
    """The collection routes, on the app that serves the embedding routes (they share the models,
    the auth dependency, the decode threads and the limits). `errors(*statuses)` documents a
    route's error statuses (401 added where keys are required)."""
    guard = [Depends(require_key)]

    def query_slot(served: ServedCollection, model: str | None, *, texts: bool = False):
        """The served model a query is embedded with: the one asked for, else the collection's;
        refused (400) when it is of another latent space, or (text queries) when its search_query
        prefix is not the one the collection recorded (collections.store.check_space and
        check_query_prefix: the same checks as local search)."""
        from latentspace.collections.postgres import redact
        from latentspace.collections.store import CollectionSpaceError, check_query_prefix, check_space

        slot = registry.get(model or served.slot_name)
        manifest, where = served.collection.manifest, redact(served.where)
        what = f"served model {slot.name!r} ({slot.served.spec})"
        try:
            check_space(manifest, slot.model.identity, what=what, directory=where)
            if texts:
                require_modality(slot, "text", "a text query")
                check_query_prefix(manifest, slot.model.text_prefix("search_query"), what=what, directory=where)
        except CollectionSpaceError as e:
            raise ApiError(400, str(e)) from e
        return slot

    def result(served: ServedCollection, hit) -> SearchResult:
        return SearchResult(
            id=hit.id,
            score=hit.score,
            relevance=hit.relevance,
            match=bool(hit.match),
            path=hit.path,
            url=hit.url,
            caption=hit.caption,
            width=hit.width,
            height=hit.height,
            thumbnail=_thumbnail_url(served.name, hit.id),
        )

    async def search(
        served: ServedCollection,
        query: dict[str, str],
        terms: list[SearchTerm],
        f: SearchFilters,
        image: tuple[np.ndarray, float] | None = None,
    ) -> SearchResponse:
        """Embed the text terms on the query model, look up the item terms, and search with their
        weighted sum (plus an uploaded image's vector, already embedded)."""
        from latentspace.collections import CollectionError, Filters, QueryError, weighted_query
        from latentspace.collections.search import ItemNotFound, bar_for

        filters = Filters(path_prefix=f.path_prefix or None, caption_contains=f.caption_contains or None)
        c = served.collection
        texts = [term for term in terms if term.text is not None]
        vectors: list[np.ndarray] = []
        if texts:  # embedded at once, so the model's worker batches them
            slot = query_slot(served, f.model, texts=True)
            vectors = list(await asyncio.gather(*(embed_query_text(slot, term.text) for term in texts)))
        weights = [term.weight for term in texts]
        if image is not None:
            vectors.append(image[0])
            weights.append(image[1])

        # the default bar is for a query of one text (what the calibration is made of)
        one_text = image is None and len(terms) == 1 and terms[0].text is not None and terms[0].weight > 0
        bar = bar_for(f.min_relevance, text_only=one_text)

        def run():
            liked = [term for term in terms if term.like is not None]
            named = [c.item(term.like).id for term in liked]  # an id, or a path in the collection
            combined = weighted_query(vectors + [c.vector(i) for i in named], weights + [t.weight for t in liked])
            return c.search_vector(combined, f.k, f.min_score, filters, exclude=named, min_relevance=bar)

        try:
            hits = await asyncio.get_running_loop().run_in_executor(None, run)
            applied = c.relevance_bar(bar)
        except ItemNotFound as e:
            raise ApiError(404, str(e)) from e
        except (QueryError, CollectionError) as e:
            raise ApiError(422, str(e)) from e
        return SearchResponse(
            collection=served.name,
            space=c.space,
            query=query,
            results=[result(served, h) for h in hits],
            matches=hits.matches,
            min_relevance=applied,
        )

    @app.get(
        "/v1/collections",
        dependencies=guard,
        response_model=CollectionList,
        responses=errors(),
        summary="The collections, with their space, model and counts",
    )
    async def list_collections() -> CollectionList:
        data = []
        for served in collections.items.values():
            c = served.collection
            info = c.info() if c is not None else {}
            data.append(
                CollectionInfo(
                    name=served.name,
                    space=info.get("space", ""),
                    model=info.get("model", ""),
                    served_model=served.slot_name,
                    items=info.get("items", 0),
                    dim=info.get("dim", 0),
                    search=info.get("search", ""),
                    skipped=info.get("skipped", 0),
                    updated=info.get("updated"),
                    status=served.status if not served.error else f"failed: {served.error}",
                    provenance=info.get("provenance"),
                )
            )
        return CollectionList(data=data)

    @app.post(
        "/v1/collections/{name}/search",
        dependencies=guard,
        response_model=SearchResponse,
        responses=errors(400, 404, 413, 422, 429, 503),
        summary="Search a collection by text, by one of its items, or by weighted texts and items",
    )
    async def search_text_or_like(name: str, body: SearchRequest) -> SearchResponse:
        served = collections.get(name)
        if body.text is not None:
            query = {"text": body.text}
        elif body.like is not None:
            query = {"like": body.like}
        else:
            query = {"terms": _terms_text(body.query_terms())}
        return await search(served, query, body.query_terms(), body)

    @app.post(
        "/v1/collections/{name}/search/image",
        dependencies=guard,
        response_model=SearchResponse,
        responses=errors(400, 404, 413, 415, 422, 429, 503),
        summary="Search a collection by an uploaded image (and weighted texts and items)",
        openapi_extra={
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": SEARCH_IMAGE_FORM}}}
        },
    )
    async def search_image(name: str, request: Request) -> SearchResponse:
        served = collections.get(name)
        form, uploads = await read_image_form(request, field="image")
        if len(uploads) != 1:
            raise ApiError(400, "send exactly one image as an 'image' file part (curl: -F image=@photo.jpg)")
        fields = _image_fields(form)
        upload = uploads[0]
        vector = await embed_query_image(
            query_slot(served, fields.model), await upload.read(), f"image ({upload.filename or 'unnamed'})"
        )
        query = {"image": upload.filename or "image"}
        if fields.terms:
            query["terms"] = _terms_text(fields.terms)
        return await search(served, query, fields.terms or [], fields, image=(vector, fields.image_weight))

    @app.get(
        "/v1/collections/{name}/items/{item_id}",
        dependencies=guard,
        response_model=ItemResponse,
        responses=errors(404, 422, 503),
        summary="An item's metadata",
    )
    async def item(name: str, item_id: str) -> dict[str, Any]:
        served = collections.get(name)
        hit = _item(served, item_id)
        return {**hit.to_dict(), "thumbnail": _thumbnail_url(served.name, hit.id)}

    # response_class=Response: the JPEG is the only 200 body, and the errors stay documented as JSON
    @app.get(
        "/v1/collections/{name}/items/{item_id}/thumbnail",
        dependencies=guard,
        response_class=Response,
        responses={
            200: {
                "description": "a JPEG of the item, at most `size` pixels on its longer side",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors(404, 422, 503),
        },
        summary="A small JPEG of an item",
    )
    async def thumbnail(
        name: str,
        item_id: str,
        size: int = Query(256, description=f"longer side in pixels, clamped to 16..{THUMBNAIL_MAX}"),
    ) -> Response:
        served = collections.get(name)
        hit = _item(served, item_id)
        size = max(16, min(int(size), THUMBNAIL_MAX))
        key = (hit.id, size)
        data = served.thumbnails.get(key)
        if data is None:
            data = await asyncio.get_running_loop().run_in_executor(
                decode_pool, _make_thumbnail, served.collection, hit.id, size, settings.max_pixels
            )
            if data is None:
                raise ApiError(
                    404,
                    f"no image to show for item {hit.id}: its file changed or is gone, or it was "
                    "read from a URL or a piped shard",
                )
            served.thumbnails[key] = data
            while len(served.thumbnails) > THUMBNAIL_CACHE:
                served.thumbnails.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _image_fields(form: dict[str, Any]) -> SearchImageFields:
    """The image search's form fields, validated (`terms` is JSON text in a form)."""
    values = {k: v for k, v in form.items() if k != "image" and v != ""}
    if "terms" in values:
        try:
            values["terms"] = json.loads(values["terms"])
        except (ValueError, RecursionError) as e:
            raise ApiError(
                422, f'terms must be a JSON list such as [{{"text": "at night"}}, {{"like": "ID", "weight": -1}}]: {e}'
            ) from e
    try:
        return SearchImageFields.model_validate(values)
    except ValueError as e:
        raise ApiError(422, f"invalid search fields: {e}") from e


def _terms_text(terms: list[SearchTerm]) -> str:
    """The terms as the response's `query` names them: JSON text."""
    return json.dumps([term.model_dump(exclude_none=True) for term in terms], ensure_ascii=False)


def _thumbnail_url(collection: str, item_id: str) -> str:
    return f"/v1/collections/{quote(collection, safe='')}/items/{quote(item_id, safe='')}/thumbnail"


def _item(served: ServedCollection, item_id: str):
    """The item with exactly this id (a path or key never names an item over HTTP)."""
    from latentspace.collections.search import ItemNotFound

    try:
        hit = served.collection.item(item_id)
    except ItemNotFound as e:
        raise ApiError(404, f"no item {item_id!r} in collection {served.name!r}") from e
    if hit.id != item_id:
        raise ApiError(404, f"no item {item_id!r} in collection {served.name!r}")
    return hit


def _make_thumbnail(collection, item_id: str, size: int, max_pixels: int) -> bytes | None:
    from latentspace.data.images import ImageDecodeError, decode_image

    data = collection.read_image_bytes(item_id)
    if data is None:
        return None
    try:
        image = decode_image(data, name=f"item {item_id}", max_pixels=max_pixels)
    except ImageDecodeError:
        return None
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def query_vector(rows) -> np.ndarray:
    """One query's rows -> the unit vector a collection is searched with."""
    return finish(rows)[0].numpy()
