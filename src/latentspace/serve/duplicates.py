"""A collection's duplicate groups on the server:

    GET /v1/collections/{name}/duplicates?similar=&near_candidate=&near_pixels=&k=

The same groups as `latentspace collection duplicates NAME --json` (collections/duplicates.py):
exact, near and similar, each member with its id, path (or URL, or shard and key) and thumbnail
link. The search runs once per collection snapshot and settings and is kept (a served collection
does not change until the server opens it again), on a worker thread, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query
from pydantic import BaseModel, Field, ValidationError

from latentspace.collections.duplicates import DuplicateSettings
from latentspace.serve.errors import ApiError

CACHED_REPORTS = 8  # per collection: a page asks for the defaults, a few users try other thresholds


class DuplicateMember(BaseModel):
    id: str
    path: str | None = None
    url: str | None = None
    shard: str | None = None
    key: str | None = None
    thumbnail: str


class DuplicateGroup(BaseModel):
    level: Literal["exact", "near", "similar"]
    size: int
    members: list[DuplicateMember]


class LevelCounts(BaseModel):
    pairs: int
    groups: int


class DuplicatesResponse(BaseModel):
    collection: str
    items: int
    search: str = Field(description="how the neighbours were found: exact or hnsw")
    settings: dict[str, Any] = Field(description="the thresholds and k used")
    counts: dict[str, LevelCounts] = Field(description="pairs and groups per level")
    unverified: int = Field(description="candidate pairs whose images could not be read again (at most similar)")
    groups: list[DuplicateGroup]


def add_duplicate_routes(app: FastAPI, *, collections, require_key: Callable, errors: Callable) -> None:
    """The duplicates route, on the app that serves the collection routes (serve/collections.py's
    CollectionSet, auth dependency and documented errors)."""
    reports: dict[tuple[str, int, tuple], dict[str, Any]] = {}

    @app.get(
        "/v1/collections/{name}/duplicates",
        dependencies=[Depends(require_key)],
        response_model=DuplicatesResponse,
        responses=errors(404, 422, 503),
        summary="A collection's duplicate groups: exact copies, near copies and similar items",
    )
    async def duplicates(
        name: str,
        similar: float | None = Query(None, description="cosine at or above which two items are similar"),
        near_candidate: float | None = Query(None, description="cosine from which a pair's pixels are compared"),
        near_pixels: float | None = Query(None, description="pixel agreement from which a pair is a near copy"),
        k: int | None = Query(None, description="neighbours looked at per item"),
    ) -> dict[str, Any]:
        from latentspace.collections.duplicates import find_duplicates

        served = collections.get(name)
        given = {"similar": similar, "near_candidate": near_candidate, "near_pixels": near_pixels, "k": k}
        try:
            settings = DuplicateSettings(**{key: value for key, value in given.items() if value is not None})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors(include_url=False))
            raise ApiError(422, f"invalid duplicate settings: {problems or e}") from e
        collection = served.collection
        key = (served.name, id(collection), tuple(sorted(settings.model_dump().items())))
        body = reports.get(key)
        if body is None:
            report = await asyncio.get_running_loop().run_in_executor(None, find_duplicates, collection, settings)
            body = report.to_dict()
            body["collection"] = served.name
            for group in body["groups"]:
                for member in group["members"]:
                    member["thumbnail"] = (
                        f"/v1/collections/{quote(served.name, safe='')}/items/{quote(member['id'], safe='')}/thumbnail"
                    )
            mine = [k for k in reports if k[0] == served.name]
            if len(mine) >= CACHED_REPORTS:
                reports.pop(mine[0])
            reports[key] = body
        return body
