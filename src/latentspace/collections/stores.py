"""Which store a collection lives in: the embedded one (a directory of Parquet parts and a faiss
index, the default) or PostgreSQL with pgvector (postgres.py). Commands, the server and Python
code open and build collections through these two functions, so choosing the store is one
option (`--store postgresql://...`), never another code path for the user."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentspace.collections.build import BuildReport, build_collection
from latentspace.collections.search import Collection


def open_collection(where: str | os.PathLike, store: str | None = None) -> Collection:
    """The collection `where` (a directory, or a name under artifacts/collections); with `store`
    (postgresql://USER@HOST/DB), the collection named `where` in that database. Both have the
    same search methods."""
    if store is None:
        return Collection.open(where)
    from latentspace.collections.postgres import PgCollection, check_store_url

    return PgCollection.open(check_store_url(store), str(where))


def build_in(
    name: str,
    model: Any,
    source: str | Path | None,
    *,
    store: str | None = None,
    out: Path | None = None,
    log: Callable[[str], None] = lambda line: None,
    **kwargs: Any,
) -> BuildReport:
    """Build collection `name` in the embedded store (in `out`) or, with `store`, in PostgreSQL
    (`out`: the local work directory, see postgres.py). `kwargs`: build_collection's."""
    if store is None:
        assert out is not None, "the embedded store needs the collection's directory"
        return build_collection(out, model, source, name=name, log=log, **kwargs)
    from latentspace.collections.postgres import build_in_store

    return build_in_store(store, name, model, source, out=out, log=log, **kwargs)
