"""A collection on disk: Parquet parts, the `collection.json` manifest, and the bookkeeping files.

    DIR/
      collection.json     the manifest: model spec, space identity, dim, dtype, the settings that
                          shaped the vectors, sources, the list of committed parts, counts, the
                          relevance calibration (relevance.py)
      parts/part-000000.parquet ...
                          the vectors and their metadata, one row per live item (below)
      skipped.jsonl       items left out, one JSON object a line: key, path/url/shard, reason
      index/              the approximate index, when the collection is large enough (index.py)
      plan.json, staging/ only while a build is running or was interrupted (build.py)
      .lock               held (flock) by the one build allowed at a time

A part is a standard Parquet file that pandas, DuckDB or pyarrow read as is:

    seq        int64   row sequence number: part ordinal * 2**20 + position in the unit; unique
                       per embedded version of an item, the label the approximate index uses
    id         string  the item's stable id (16 hex digits; see sources.item_id)
    source     int32   which of the manifest's sources the item came from
    key        string  the item within its source: relative path, table value, or sample key
    path       string  the local file (folders and tables), else null
    url        string  the image URL (URL tables; img2dataset's json `url` in shards), else null
    shard      string  the shard (shard sources), else null
    offset     int64   byte offset of the image in the shard (read it back with one seek)
    length     int64   its length in bytes
    caption    string  the table's caption/text column, or the sample's txt (or json caption)
    width, height int32   the image as decoded
    sha256     string  of the image bytes
    size       int64   bytes
    mtime_ns   int64   the file's modification time (folders and tables)
    embedding  fixed_size_list<float32 or float16>[dim]   unit length (before any float16 cast)

Every part also carries, in its Parquet key-value metadata under `latentspace`, the model spec,
space identity, dim, dtype and vector settings, so a part copied elsewhere still says what it
holds. Parts are written to a temporary name and renamed into place, so a part either exists
whole or not at all: that is what makes an interrupted build resumable part by part.

A build keeps the parts equal to the live collection: an item that leaves (deleted, changed)
has its row removed by rewriting its part, with the other rows copied, not re-embedded. So
`SELECT * FROM 'parts/*.parquet'` is always the collection, with no tombstones to apply.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentspace import atomic
from latentspace.collections.provenance import Provenance
from latentspace.collections.sources import ShardItem, Source
from latentspace.space import SpaceIdentity, SpaceMismatchError
from latentspace.workspace import DEFAULT as WORKSPACE

FORMAT = "latentspace.collection/1"
PART_FORMAT = "latentspace.collection-part/1"
MANIFEST = "collection.json"
PARTS = "parts"
STAGING = "staging"
PLAN = "plan.json"
SKIPPED = "skipped.jsonl"
LOCK = ".lock"
INDEX = "index"
DEFAULT_ROOT = WORKSPACE.collections
Dtype = Literal["float32", "float16"]  # how vectors are stored
DTYPES: tuple[str, ...] = get_args(Dtype)
POSITION_BITS = 20  # seq = ordinal << POSITION_BITS | position

META_FIELDS = [
    pa.field("seq", pa.int64()),
    pa.field("id", pa.string()),
    pa.field("source", pa.int32()),
    pa.field("key", pa.string()),
    pa.field("path", pa.string()),
    pa.field("url", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("offset", pa.int64()),
    pa.field("length", pa.int64()),
    pa.field("caption", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("sha256", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
]
META_COLUMNS = [f.name for f in META_FIELDS]


class CollectionError(ValueError):
    """A collection that cannot be used as asked; the message says what to do."""


class CollectionNotFound(CollectionError, FileNotFoundError):
    pass


class CollectionSpaceError(CollectionError, SpaceMismatchError):
    """A model of another latent space used with a collection (vectors are never mixed)."""


class CollectionBusy(CollectionError):
    """Another build holds the collection's lock."""


def seq_of(ordinal: int, position: int) -> int:
    return (ordinal << POSITION_BITS) | position


def part_path(directory: Path, name: str) -> Path:
    """Where the part called `name` lies in the collection at `directory`."""
    return directory / PARTS / f"{name}.parquet"


def part_name(ordinal: int) -> str:
    return f"part-{ordinal:06d}"


def schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float32() if dtype == "float32" else pa.float16()
    return pa.schema([*META_FIELDS, pa.field("embedding", pa.list_(value, dim))])


# --- small atomic files -----------------------------------------------------------------------


def write_json(path: Path, value: Any) -> None:
    atomic.write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n", durable=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_skipped(directory: Path) -> list[dict[str, Any]]:
    path = directory / SKIPPED
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_skipped(directory: Path, entries: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(e, sort_keys=True, ensure_ascii=False) for e in entries]
    atomic.write_text(directory / SKIPPED, "\n".join(lines) + ("\n" if lines else ""), durable=True)


@contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """One build at a time per collection. The kernel drops the lock when the process dies
    (kill -9 included), so a crashed build never leaves a stale lock behind."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectionBusy(f"another build is running on {directory}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- the manifest -----------------------------------------------------------------------------


@dataclass
class PartEntry:
    """One committed part as the manifest lists it: its file's name, ordinal, source (an index
    into the manifest's sources), kind and rows; a shard's part also records the shard's url,
    size and mtime_ns (how the next build recognises an unchanged shard)."""

    name: str
    ordinal: int
    source: int
    kind: str  # "files" or "shard"
    rows: int = 0
    shard: ShardItem | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "ordinal": self.ordinal, "source": self.source, "kind": self.kind}
        if self.shard is not None:
            out["shard"] = asdict(self.shard)
        out["rows"] = self.rows
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartEntry:
        shard = ShardItem(**d["shard"]) if d.get("shard") else None
        return cls(d["name"], int(d["ordinal"]), int(d["source"]), d["kind"], int(d.get("rows", 0)), shard)


@dataclass
class Manifest:
    """collection.json: the collection's model and space, how its vectors were made, its sources
    and its committed parts."""

    name: str
    model: str
    identity: SpaceIdentity
    dtype: str
    settings: dict[str, Any]
    sources: list[Source] = field(default_factory=list)
    parts: list[PartEntry] = field(default_factory=list)
    next_ordinal: int = 0
    hnsw_min_rows: int | None = None  # an HNSW index from this many rows; None: index.EXACT_MAX_FLOATS decides
    counts: dict[str, int] = field(default_factory=dict)
    updated: str = ""
    relevance: dict[str, Any] | None = None  # the relevance calibration (relevance.Calibration.to_dict)
    provenance: Provenance | None = None  # None: built before provenance was recorded (0.4.0)

    @property
    def dim(self) -> int:
        return self.identity.dim

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "model": self.model,
            "identity": self.identity.to_dict(),
            "space": str(self.identity),
            "dim": self.dim,
            "dtype": self.dtype,
            "settings": self.settings,
            "sources": [source.to_dict() for source in self.sources],
            "parts": [part.to_dict() for part in self.parts],
            "next_ordinal": self.next_ordinal,
            "hnsw_min_rows": self.hnsw_min_rows,
            "counts": self.counts,
            "updated": self.updated,
            "relevance": self.relevance,
            "provenance": None if self.provenance is None else self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format") != FORMAT:
            raise CollectionError(f"not a collection manifest of format {FORMAT} (found {d.get('format')!r})")
        return cls(
            name=d["name"],
            model=d["model"],
            identity=SpaceIdentity.from_dict(d["identity"]),
            dtype=d["dtype"],
            settings=d.get("settings", {}),
            sources=[Source.from_dict(source) for source in d.get("sources", [])],
            parts=[PartEntry.from_dict(part) for part in d.get("parts", [])],
            next_ordinal=int(d.get("next_ordinal", 0)),
            hnsw_min_rows=d.get("hnsw_min_rows"),
            counts=d.get("counts", {}),
            updated=d.get("updated", ""),
            relevance=d.get("relevance"),
            provenance=Provenance.from_dict(d["provenance"]) if d.get("provenance") else None,
        )

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        return cls.from_dict(read_json(directory / MANIFEST))

    def save(self, directory: Path) -> None:
        write_json(directory / MANIFEST, self.to_dict())

    def source_index(self, location: str) -> int | None:
        return next((i for i, s in enumerate(self.sources) if s.location == location), None)


def manifest_info(manifest: Manifest, *, directory: str, items: int, search: str) -> dict[str, Any]:
    """What `collection info` shows of a collection, whichever store holds it."""
    m = manifest
    return {
        "name": m.name,
        "directory": directory,
        "model": m.model,
        "space": str(m.identity),
        "identity": m.identity.to_dict(),
        "dim": m.dim,
        "dtype": m.dtype,
        "settings": m.settings,
        "items": items,
        "parts": len(m.parts),
        "skipped": m.counts.get("skipped", 0),
        "sources": [source.to_dict() for source in m.sources],
        "search": search,
        "updated": m.updated,
        "relevance": f"calibrated over {m.relevance['rows']} rows" if m.relevance else "none (build it again)",
        # what made the vectors (provenance.py); None: unknown, built before it was recorded
        "provenance": None if m.provenance is None else m.provenance.summary({p.name: p.rows for p in m.parts}),
    }


def resolve_collection(name_or_dir: str | os.PathLike, root: Path = DEFAULT_ROOT) -> Path:
    """A collection directory from a path (holding collection.json) or a name under `root`."""
    text = str(name_or_dir)
    path = Path(text).expanduser()
    if (path / MANIFEST).is_file():
        return path
    named = root / text
    if "/" not in text and (named / MANIFEST).is_file():
        return named
    raise CollectionNotFound(
        f"no collection at {text!r}"
        + ("" if "/" in text else f" (nor {named})")
        + "; build one with `latentspace collection build NAME --model SPEC --images SOURCE`"
    )


def check_space(manifest: Manifest, identity: SpaceIdentity, *, what: str, directory: Path) -> None:
    """Refuse a model of another space: the vectors of two spaces are not comparable."""
    if identity == manifest.identity:
        return
    raise CollectionSpaceError(
        f"{what} is in latent space {identity}, but collection {manifest.name!r} ({directory}) holds vectors of "
        f"space {manifest.identity} (built with model {manifest.model!r}). Vectors of different spaces are not "
        f"comparable: use a model of the collection's space (e.g. {manifest.model!r}), or build a new collection "
        "for this model with another name or --out"
    )


def check_query_prefix(manifest: Manifest, prefix: str | None, *, what: str, directory: Path | str) -> None:
    """Refuse a text query whose `search_query` prefix is not the one the collection recorded: the
    same words with another prefix are another vector. A collection without a recorded prefix
    (built before 0.5, or by an image-only model) is not checked."""
    recorded = manifest.provenance.query_prefix if manifest.provenance is not None else None
    if recorded is None or prefix == recorded:
        return
    raise CollectionSpaceError(
        f"{what} puts {prefix!r} before a search query, but collection {manifest.name!r} ({directory}) records "
        f"{recorded!r} as the query prefix of its space (model {manifest.model!r}): the same words with another "
        f"prefix are another vector. Query with a model whose search_query prefix is {recorded!r} (e.g. "
        f"{manifest.model!r}), or rebuild the collection with this model under another name or --out"
    )


# --- parts ------------------------------------------------------------------------------------


def part_metadata(manifest_like: dict[str, Any]) -> dict[bytes, bytes]:
    return {b"latentspace": json.dumps({"format": PART_FORMAT, **manifest_like}, sort_keys=True).encode()}


def read_part_info(path: Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"latentspace", b"{}"))


def write_part(path: Path, columns: dict[str, list], vectors: np.ndarray, dtype: str, info: dict[str, Any]) -> int:
    """Write one part atomically; returns its row count. `vectors` are unit float32 rows."""
    dim = vectors.shape[1] if vectors.ndim == 2 else int(info["dim"])
    target = schema(dim, dtype)
    flat = np.ascontiguousarray(vectors, dtype=np.float32 if dtype == "float32" else np.float16).reshape(-1)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    arrays = [pa.array(columns[f.name], type=f.type) for f in META_FIELDS] + [embedding]
    table = pa.Table.from_arrays(arrays, schema=target.with_metadata(part_metadata(info)))
    _write_table(path, table)
    return table.num_rows


def _write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed writer settings and no timestamps: the same rows give the same bytes, which is what
    # lets a resumed build match an uninterrupted one file for file.
    with atomic.replacing(path, durable=True) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=8192)


def rewrite_part(src: Path, dst: Path, *, delete: set[int], stats: dict[int, tuple[int, int]]) -> int:
    """Copy a part without the rows whose seq is in `delete`, with (size, mtime_ns) replaced for
    the rows in `stats`; vectors are copied, never recomputed. Idempotent (deleting an absent
    row does nothing), so a rewrite interrupted and redone gives the same file."""
    table = pq.read_table(src)
    seqs = table.column("seq").to_numpy()
    if delete:
        keep = ~np.isin(seqs, np.fromiter(delete, dtype=np.int64))
        table, seqs = table.filter(pa.array(keep)), seqs[keep]
    if stats:
        sizes, mtimes = table.column("size").to_pylist(), table.column("mtime_ns").to_pylist()
        for i, seq in enumerate(seqs.tolist()):
            if seq in stats:
                sizes[i], mtimes[i] = stats[seq]
        table = table.set_column(table.schema.get_field_index("size"), "size", pa.array(sizes, pa.int64()))
        table = table.set_column(table.schema.get_field_index("mtime_ns"), "mtime_ns", pa.array(mtimes, pa.int64()))
    _write_table(dst, table)
    return table.num_rows


def part_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def read_meta(paths: Iterable[Path], columns: list[str] | None = None) -> pa.Table:
    """The metadata columns (no vectors) of the given parts, concatenated in order."""
    columns = columns or META_COLUMNS
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if not tables:
        return pa.schema([f for f in META_FIELDS if f.name in columns]).empty_table()
    return pa.concat_tables(tables)


def read_vectors(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """A part's embeddings as float32 (n, dim), optionally only the given row positions."""
    column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(-1, dim).astype(np.float32, copy=False)
    return vectors if rows is None else vectors[rows]
