"""Searching a collection: `Collection.open(dir)` and its search methods.

The same object serves the CLI, and is meant for the server and the remote client too: open once,
search many times. Opening reads collection.json, the metadata columns of every part (not the
vectors) and either the HNSW index (large collections: its storage holds the vectors) or the
vectors from the parts (small ones, searched exactly). What it opened is a snapshot: a build that
commits later is seen by opening again.

Queries: a text (embedded with the model's `search_query` task prefix), an image (path, bytes or
PIL), an item of the collection (`search_like`: its stored vector; the item itself is left out
of the results), a raw vector, or several of these with weights (`search_terms`: the normalised
weighted sum of their unit vectors, so a negative weight pushes results away from a term). A
query model must be in the collection's latent space, or it is refused. Filters (`Filters`: path
prefix, caption substring) restrict the candidates before ranking; with a filter that leaves few
rows the search is exact over them, otherwise the HNSW search skips excluded rows (an
allow-list), so filtered results are as complete as unfiltered.

Every hit carries `relevance` (0..1, relevance.py) beside its cosine `score`; a query of one text
keeps only the hits reaching `min_relevance` (default relevance.DEFAULT_MIN_RELEVANCE), and when
none does the answer (`Hits`) has `matches` 0 and still holds the nearest hits, marked as below
the bar. Both stores answer through `Collection.search_vector`; each ranks with its own `_nearest`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from latentspace.collections import relevance, store
from latentspace.collections.index import HnswIndex, exact_search, use_ann
from latentspace.collections.sources import read_shard_member
from latentspace.models.embedder import Embedder
from latentspace.options import Flag


class ItemNotFound(store.CollectionError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class QueryError(store.CollectionError):
    """A query that gives nothing to search toward (no positive weight, or terms that cancel out)."""


TermKind = Literal["text", "like", "image"]


@dataclass(frozen=True)
class Term:
    """One part of a weighted query: a text, an item of the collection (`like`: its id or path)
    or an image (path, bytes or PIL), with a weight; a negative weight pushes results away."""

    kind: TermKind
    value: Any
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("text", "like", "image"):
            raise ValueError(f"a term's kind is text, like or image, not {self.kind!r}")
        if not np.isfinite(self.weight):
            raise ValueError(f"a term's weight must be a finite number, not {self.weight!r}")


def check_weights(weights: list[float]) -> None:
    """Refuse, before anything is embedded, a query with nothing to move toward."""
    if not weights:
        raise QueryError("give at least one term to search by")
    if not any(w > 0 for w in weights):
        raise QueryError(
            "every term has a zero or negative weight, so there is nothing to search toward: "
            "give at least one term with a positive weight (e.g. a text, with the others subtracted)"
        )


def weighted_query(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The normalised weighted sum of the terms' unit vectors: the one vector a query searches with.

    Each vector is made unit first, so a term's pull is its weight whatever model or modality
    embedded it; the sum is normalised because the collection is ranked by cosine."""
    check_weights(weights)
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32).reshape(-1))
    for vector, weight in zip(vectors, weights, strict=True):
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        total += weight * vector / max(float(np.linalg.norm(vector)), 1e-12)
    norm = float(np.linalg.norm(total))
    # The sum of unit vectors with at least one positive weight is zero only when the terms
    # cancel (the same text added and subtracted); a tiny norm would rank by rounding noise.
    if norm < 1e-4 * max(sum(abs(w) for w in weights), 1.0):
        raise QueryError(
            "the terms cancel out (their weighted sum is a zero vector): remove the terms that are "
            "subtracted as much as they are added"
        )
    return total / norm


@dataclass(frozen=True)
class Filters:
    """Metadata filters. `path_prefix` matches the start of an item's path, URL, shard or key
    (its path relative to the source folder); `caption_contains` is case-insensitive."""

    path_prefix: str | None = None
    caption_contains: str | None = None

    def __bool__(self) -> bool:
        return bool(self.path_prefix or self.caption_contains)


SEARCH_PANELS = {"results": "Results", "filters": "Filters"}
SEARCH_ENV_PREFIX = "LATENTSPACE_SEARCH_"


class SearchSettings(BaseModel):
    """What a search returns (`collection search` generates its options from these fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: Annotated[int, Flag("results", name="top", short="-k")] = Field(10, ge=1, description="how many results")
    min_score: Annotated[float | None, Flag("results")] = Field(
        None, description="leave out results scoring below this (cosine)"
    )
    min_relevance: Annotated[float | None, Flag("results")] = Field(
        None,
        ge=0.0,
        le=1.0,
        description=f"only results at least this relevant, 0..1 (default {relevance.DEFAULT_MIN_RELEVANCE}; 0: "
        "every result); when none is, the nearest are shown as below the bar",
    )
    path_prefix: Annotated[str | None, Flag("filters")] = Field(
        None, description="only items whose path (or URL, or path in the source folder) starts with this"
    )
    caption_contains: Annotated[str | None, Flag("filters")] = Field(
        None, description="only items whose caption contains this (any case)"
    )
    model: Annotated[str | None, Flag("results")] = Field(
        None, description="the query model (default: the collection's); must be in the collection's latent space"
    )

    @property
    def filters(self) -> Filters:
        return Filters(path_prefix=self.path_prefix, caption_contains=self.caption_contains)


@dataclass
class Hit:
    """One search result (also what `item(id)` returns, with score None). `relevance` is the
    score calibrated to 0..1 (relevance.py; None when the collection has no calibration) and
    `match` whether it reaches the search's min_relevance."""

    id: str
    score: float | None
    path: str | None
    url: str | None
    caption: str | None
    key: str
    shard: str | None = None
    offset: int | None = None
    length: int | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    relevance: float | None = None
    match: bool | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], score: float | None) -> Hit:
        """A hit from an item's stored metadata (the store's META_COLUMNS, by name)."""
        return cls(
            id=meta["id"],
            score=score,
            path=meta["path"],
            url=meta["url"],
            caption=meta["caption"],
            key=meta["key"],
            shard=meta["shard"],
            offset=meta["offset"],
            length=meta["length"],
            width=meta["width"],
            height=meta["height"],
            sha256=meta["sha256"],
            size=meta["size"],
            mtime_ns=meta["mtime_ns"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> dict[str, Any]:
        """What `collection search --json` prints per line."""
        out = {
            "id": self.id,
            "score": None if self.score is None else round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "match": self.match,
            "path": self.path,
            "url": self.url,
            "caption": self.caption,
        }
        if self.shard is not None:
            out.update(shard=self.shard, key=self.key, offset=self.offset)
        return out


def bar_for(min_relevance: float | None, *, text_only: bool) -> float | None:
    """The min_relevance to search with: the one given; else None (the default bar) for a query of
    one text, and 0 (no bar) for image, item and weighted queries. The calibration is made of text
    queries, and on image queries it did not separate present from absent concepts
    (docs/collections.md, "Relevance, measured"), so their hits carry relevance but are not cut
    unless a bar is asked for."""
    if min_relevance is not None or text_only:
        return min_relevance
    return 0.0


class Hits(list[Hit]):
    """A search's hits, a list as ever, with `matches`: how many reach the search's min_relevance.
    When some do, the list holds only those; when none does (`matches` 0), it holds the nearest
    hits all the same, each with `match` False, so an answer can say "nothing here looks like
    that" and still show what is nearest."""

    def __init__(self, hits: Iterable[Hit] = (), matches: int | None = None) -> None:
        super().__init__(hits)
        self.matches = len(self) if matches is None else matches


class Collection:
    def __init__(
        self,
        directory: Path,
        manifest: store.Manifest,
        meta: pa.Table,
        vectors: np.ndarray | None,
        index: HnswIndex | None,
        index_rows: np.ndarray | None,
    ) -> None:
        self.directory, self.manifest, self.meta = directory, manifest, meta
        self._vectors = vectors  # (rows, dim) float32 aligned with meta, when searched exactly
        self._index = index
        self._index_rows = index_rows  # meta row of each index entry, -1 for rows no longer live
        self._ids = {v: i for i, v in enumerate(meta.column("id").to_pylist())}
        self._row_entry: np.ndarray | None = None  # index entry of each meta row (built lazily)

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, where: str | os.PathLike) -> Collection:
        """Open a collection by directory, or by name under artifacts/collections (a collection in
        PostgreSQL: stores.open_collection)."""
        directory = store.resolve_collection(where)
        manifest = store.Manifest.load(directory)
        paths = [store.part_path(directory, p.name) for p in manifest.parts]
        meta = store.read_meta(paths)
        seqs = meta.column("seq").to_numpy()
        index = None
        if use_ann(len(seqs), manifest.dim, manifest.hnsw_min_rows):
            index = HnswIndex.load(directory / store.INDEX)
            # An index that misses live rows (a build died before updating it) is not used:
            # exact search is slower but complete; the next build brings the index up to date.
            if index is not None and (index.dim != manifest.dim or not np.isin(seqs, index.labels).all()):
                index = None
        if index is not None:
            order = np.argsort(seqs)
            pos = np.searchsorted(seqs, index.labels, sorter=order)
            pos = np.clip(pos, 0, max(0, len(seqs) - 1))
            rows = order[pos] if len(seqs) else np.zeros(len(index.labels), dtype=np.int64)
            live = (seqs[rows] == index.labels) if len(seqs) else np.zeros(len(index.labels), dtype=bool)
            return cls(directory, manifest, meta, None, index, np.where(live, rows, -1))
        vectors = (
            np.concatenate([store.read_vectors(p) for p in paths])
            if paths
            else np.empty((0, manifest.dim), dtype=np.float32)
        )
        return cls(directory, manifest, meta, vectors, None, None)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def space(self) -> str:
        return str(self.manifest.identity)

    def __len__(self) -> int:
        return self.meta.num_rows

    def info(self) -> dict[str, Any]:
        search = "hnsw" if self._index is not None else "exact"
        return store.manifest_info(self.manifest, directory=str(self.directory), items=len(self), search=search)

    def skipped(self) -> list[dict[str, Any]]:
        return store.read_skipped(self.directory)

    @cached_property
    def calibration(self) -> relevance.Calibration | None:
        """The manifest's relevance calibration (None: the collection has none); read once, as the
        manifest is the snapshot the collection was opened with."""
        found = self.manifest.relevance
        return relevance.Calibration.from_dict(found) if found else None

    def relevance_bar(self, min_relevance: float | None) -> float | None:
        """The min_relevance a search applies: the one given, else the default when the collection
        is calibrated (none when it is not). A bar asked of an uncalibrated collection is refused."""
        if min_relevance is not None and not 0.0 <= min_relevance <= 1.0:
            raise ValueError(f"min_relevance is between 0 and 1, not {min_relevance!r}")
        if self.calibration is None:
            if min_relevance:
                raise store.CollectionError(
                    f"collection {self.name!r} has no relevance calibration (built before relevance existed, with "
                    "a model that embeds no text, or with under 2 items), so min_relevance cannot apply: run its "
                    "build again (`latentspace collection build NAME`: it embeds only what changed, then "
                    "calibrates), or cut by --min-score instead"
                )
            return None
        return relevance.DEFAULT_MIN_RELEVANCE if min_relevance is None else float(min_relevance)

    # -- items --------------------------------------------------------------------------------------
    def _row(self, item: str) -> int:
        row = self._ids.get(item)
        if row is None:  # a path, URL or key also names an item, when exactly one matches
            for column in ("path", "url", "key"):
                matches = np.flatnonzero(_bools(pc.fill_null(pc.equal(self.meta.column(column), item), False)))
                if len(matches) == 1:
                    return int(matches[0])
            raise ItemNotFound(
                f"no item {item!r} in collection {self.name!r} (give an id from search results, "
                "or a path in the collection)"
            )
        return row

    def _hit(self, row: int, score: float | None) -> Hit:
        return Hit.from_meta({name: self.meta.column(name)[row].as_py() for name in store.META_COLUMNS}, score)

    def item(self, item_id: str) -> Hit:
        """An item's metadata by id (or by path/URL/key when exactly one item has it)."""
        return self._hit(self._row(item_id), None)

    def read_image_bytes(self, item_id: str) -> bytes | None:
        """The image bytes of an item, for thumbnails: the file (folders, tables), the sample
        (local shards); None for URLs and pipe: shards, and for files that have since changed
        (sha256 no longer matches) or gone."""
        hit = self.item(item_id)
        try:
            if hit.path is not None:
                data = Path(hit.path).read_bytes()
            elif hit.shard is not None and hit.offset is not None and hit.length is not None:
                data = read_shard_member(hit.shard, hit.offset, hit.length)
            else:
                return None
        except OSError:
            return None
        if data is None or (hit.sha256 is not None and hashlib.sha256(data).hexdigest() != hit.sha256):
            return None
        return data

    def vector(self, item_id: str) -> np.ndarray:
        return self._vector_of(self._row(item_id))

    def _vector_of(self, row: int) -> np.ndarray:
        if self._vectors is not None:
            return self._vectors[row].copy()
        return self._index.vectors()[self._entries_of(np.array([row]))[0]].copy()  # type: ignore[union-attr]

    def _entries_of(self, rows: np.ndarray) -> np.ndarray:
        if self._row_entry is None:
            entry = np.full(len(self), -1, dtype=np.int64)
            live = self._index_rows >= 0  # type: ignore[operator]
            entry[self._index_rows[live]] = np.flatnonzero(live)  # type: ignore[index]
            self._row_entry = entry
        return self._row_entry[rows]

    # -- search ---------------------------------------------------------------------------------------
    def _check_model(self, model: Embedder | str, *, texts: bool = False) -> Embedder:
        """The query model, refused when it is of another space than the collection's, or (for
        text queries, `texts`) when its search_query prefix is not the recorded one."""
        if isinstance(model, str):
            from latentspace.models.load import load

            model = load(model)
        what = f"query model {model.spec or model.name!r}"
        store.check_space(self.manifest, model.identity, what=what, directory=self.directory)
        if texts:
            model.require("text")
            prefix = model.text_prefix("search_query")
            store.check_query_prefix(self.manifest, prefix, what=what, directory=self.directory)
        return model

    def search_text(
        self,
        model: Embedder | str,
        text: str,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        min_relevance: float | None = None,
    ) -> Hits:
        model = self._check_model(model, texts=True)
        query = model.embed_texts([text], "search_query")[0].numpy()
        return self.search_vector(query, k, min_score, filters, min_relevance=min_relevance)

    def search_image(
        self,
        model: Embedder | str,
        image: Any,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        min_relevance: float | None = None,
    ) -> Hits:
        """`image`: a path, bytes or a PIL image."""
        model = self._check_model(model)
        query = model.embed_images([image])[0].numpy()
        return self.search_vector(query, k, min_score, filters, min_relevance=bar_for(min_relevance, text_only=False))

    def search_like(
        self,
        item_id: str,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        min_relevance: float | None = None,
    ) -> Hits:
        """Items nearest to an item of the collection (by id, or a path in it), without itself."""
        own, vector = self._item_vector(item_id)
        bar = bar_for(min_relevance, text_only=False)
        return self.search_vector(vector, k, min_score, filters, exclude=(own,), min_relevance=bar)

    def _item_vector(self, item: str) -> tuple[str, np.ndarray]:
        """An item's id and stored vector, by id (or by path/URL/key when exactly one item has it)."""
        row = self._row(item)
        return self.meta.column("id")[row].as_py(), self._vector_of(row)

    def search_terms(
        self,
        model: Embedder | str | None,
        terms: list[Term],
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        min_relevance: float | None = None,
    ) -> Hits:
        """Search by several weighted terms (`Term`): texts, items and images, each embedded (an
        item: its stored vector), made unit and summed with its weight; the sum, normalised, is
        the query. The items named by terms are left out of the results, as with `search_like`.
        `model` embeds the text and image terms (None will do when every term is an item)."""
        check_weights([term.weight for term in terms])
        vectors: list[np.ndarray | None] = [None] * len(terms)
        named: list[str] = []
        for i, term in enumerate(terms):
            if term.kind == "like":
                own, vectors[i] = self._item_vector(str(term.value))
                named.append(own)
        texts = [i for i, term in enumerate(terms) if term.kind == "text"]
        images = [i for i, term in enumerate(terms) if term.kind == "image"]
        if texts or images:
            if model is None:
                raise ValueError("text and image terms need a query model; pass one (or the collection's spec)")
            model = self._check_model(model, texts=bool(texts))
        if texts:  # one forward for all the texts, one for all the images
            rows = model.embed_texts([terms[i].value for i in texts], "search_query")  # type: ignore[union-attr]
            for i, row in zip(texts, rows):
                vectors[i] = row.numpy()
        if images:
            rows = model.embed_images([terms[i].value for i in images])  # type: ignore[union-attr]
            for i, row in zip(images, rows):
                vectors[i] = row.numpy()
        query = weighted_query(vectors, [term.weight for term in terms])  # type: ignore[arg-type]
        bar = bar_for(min_relevance, text_only=len(terms) == 1 and terms[0].kind == "text" and terms[0].weight > 0)
        return self.search_vector(query, k, min_score, filters, exclude=named, min_relevance=bar)

    def search_vector(
        self,
        query: np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        exclude: Iterable[str] = (),
        min_relevance: float | None = None,
    ) -> Hits:
        """The k items nearest to a unit `query` vector of the collection's dimension, leaving out
        the items whose ids are in `exclude`, each with its relevance; only those reaching
        `min_relevance` (None: the default bar) unless none does (see `Hits`). Every store
        answers through here; `_nearest` is the store's own ranking."""
        bar = self.relevance_bar(min_relevance)
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.manifest.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions; collection {self.name!r} has {self.manifest.dim}")
        hits = self._nearest(query, k, min_score, filters, exclude) if k >= 1 and len(self) else []
        calibration = self.calibration
        if calibration is None or not hits:
            for hit in hits:
                hit.match = True
            return Hits(hits)
        values = calibration.relevance(np.array([h.score for h in hits], dtype=np.float64))
        for hit, value in zip(hits, values):
            hit.relevance = float(value)
            hit.match = bar is None or float(value) >= bar
        passing = [hit for hit in hits if hit.match]
        return Hits(passing, len(passing)) if passing else Hits(hits, 0)

    def _nearest(
        self,
        query: np.ndarray,
        k: int = 10,
        min_score: float | None = None,
        filters: Filters | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """The k (≥ 1) items nearest to a float32 `query` of the collection's dimension, by score,
        without relevance: each store ranks its own way (search_vector checks the query)."""
        allowed = self._filter_rows(filters) if filters else None
        if allowed is not None and not len(allowed):
            return []
        excluded = set(exclude)
        # Ask for as many more as may be left out, so k remain.
        scores, rows = self._search(query, k + len(excluded), allowed)
        hits = [self._hit(int(r), float(s)) for s, r in zip(scores, rows) if min_score is None or s >= min_score]
        return [h for h in hits if h.id not in excluded][:k]

    def _search(self, query: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            if allowed is None:
                return exact_search(self._vectors, query, k)  # type: ignore[arg-type]
            scores, pos = exact_search(self._vectors[allowed], query, k)  # type: ignore[index]
            return scores, allowed[pos]
        if allowed is not None and not use_ann(len(allowed), self.manifest.dim, self.manifest.hnsw_min_rows):
            # few candidates: exact over them is cheap and complete
            entries = self._entries_of(allowed)
            scores, pos = exact_search(self._index.vectors()[entries], query, k)
            return scores, allowed[pos]
        mask = self._index_rows >= 0  # type: ignore[operator]
        if allowed is not None:
            wanted = np.zeros(len(self), dtype=bool)
            wanted[allowed] = True
            mask &= wanted[np.maximum(self._index_rows, 0)]  # type: ignore[arg-type]
        scores, entries = self._index.search(query, k, allowed=None if mask.all() else mask)
        return scores, self._index_rows[entries]  # type: ignore[index]

    def _filter_rows(self, filters: Filters) -> np.ndarray:
        """Meta rows that pass the filters, ascending."""
        keep = pa.array(np.ones(len(self), dtype=bool))
        if filters.path_prefix:
            prefix = filters.path_prefix
            hit = None
            for column in ("path", "url", "shard", "key"):
                match = pc.fill_null(pc.starts_with(self.meta.column(column), prefix), False)
                hit = match if hit is None else pc.or_(hit, match)
            keep = pc.and_(keep, hit)
        if filters.caption_contains:
            match = pc.match_substring(self.meta.column("caption"), filters.caption_contains, ignore_case=True)
            keep = pc.and_(keep, pc.fill_null(match, False))
        return np.flatnonzero(_bools(keep))


def _bools(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)
