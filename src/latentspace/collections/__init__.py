"""Collections: a whole image library embedded with one model, searchable by text, image or item.

    from latentspace.collections import Collection, build_collection

    build_collection("artifacts/collections/photos", "artifacts/quickstart/model", "~/Pictures")
    photos = Collection.open("photos")  # a name under artifacts/collections, or a directory
    for hit in photos.search_text(model, "a red circle", k=5):
        print(hit.score, hit.path)

Modules, in the order a build uses them: sources.py (what a folder / shards / table holds, and
reading it), settings.py (`BuildSettings`), plan.py (scan and compare: the typed plan of units),
engines.py and ray_engine.py (where units run), unit.py (one unit -> one part), commit.py (staged
parts into place, the manifest, the index), build.py (the whole build: resume, incremental
updates). store.py is the on-disk layout (Parquet parts and collection.json), index.py exact vs
HNSW search, search.py `Collection`; stores.py opens and builds a collection in either store: the
embedded one or PostgreSQL with pgvector (postgres.py); progress is shown by latentspace.progress.
"""

from latentspace.collections.build import BuildReport, build_collection
from latentspace.collections.commit import sync_index
from latentspace.collections.search import (
    Collection,
    Filters,
    Hit,
    Hits,
    ItemNotFound,
    QueryError,
    SearchSettings,
    Term,
    weighted_query,
)
from latentspace.collections.settings import BuildSettings
from latentspace.collections.sources import SourceError, UrlsNotAllowed
from latentspace.collections.store import (
    CollectionBusy,
    CollectionError,
    CollectionNotFound,
    CollectionSpaceError,
    resolve_collection,
)
from latentspace.collections.stores import build_in, open_collection
from latentspace.collections.unit import UnitRuntime, embed_unit

__all__ = [
    "BuildReport",
    "BuildSettings",
    "Collection",
    "CollectionBusy",
    "CollectionError",
    "CollectionNotFound",
    "CollectionSpaceError",
    "Filters",
    "Hit",
    "Hits",
    "ItemNotFound",
    "QueryError",
    "SearchSettings",
    "SourceError",
    "Term",
    "UnitRuntime",
    "UrlsNotAllowed",
    "build_collection",
    "build_in",
    "embed_unit",
    "open_collection",
    "resolve_collection",
    "sync_index",
    "weighted_query",
]
