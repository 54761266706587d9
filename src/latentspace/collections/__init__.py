"""Collections: a whole image library embedded with one model, searchable by text, image or item.

    from latentspace.collections import Collection, build_collection

    build_collection("artifacts/collections/photos", "artifacts/quickstart/model", "~/Pictures")
    photos = Collection.open("photos")  # a name under artifacts/collections, or a directory
    for hit in photos.search_text(model, "a red circle", k=5):
        print(hit.score, hit.path)

Modules: sources.py (what a folder / shards / table holds, and reading it), build.py (plan,
embed units into parts, commit, resume, incremental updates), store.py (the on-disk layout:
Parquet parts and collection.json), index.py (exact vs HNSW), search.py (`Collection`); progress
is shown by latentspace.progress.
"""

from latentspace.collections.build import BuildReport, BuildSettings, build_collection, embed_unit, sync_index
from latentspace.collections.search import Collection, Filters, Hit, ItemNotFound
from latentspace.collections.sources import SourceError, UrlsNotAllowed
from latentspace.collections.store import (
    CollectionBusy,
    CollectionError,
    CollectionNotFound,
    CollectionSpaceError,
    resolve_collection,
)

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
    "ItemNotFound",
    "SourceError",
    "UrlsNotAllowed",
    "build_collection",
    "embed_unit",
    "resolve_collection",
    "sync_index",
]
