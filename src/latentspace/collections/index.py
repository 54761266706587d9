"""Nearest-neighbour search over a collection: exact below a size threshold, HNSW above it.

Vectors are unit length, so cosine similarity is the inner product.

Exact search is one matrix-vector product over every live vector: perfect recall, nothing to
build or keep up to date, and its cost grows with rows x dim (it reads every float once, so it is
memory-bound). HNSW (faiss `IndexHNSWFlat`, inner product) answers in about a millisecond at any
size but costs a build (minutes per million vectors on a small machine), memory for its graph
(beside its own copy of the vectors) and some recall. So a collection is searched exactly while

    rows * dim <= EXACT_MAX_FLOATS (20M: ~26k vectors of 768 dims, ~52k of 384)

and gets an HNSW index above that: at the threshold exact search still takes a few milliseconds,
past it latency grows linearly, while below it an HNSW build is not worth its time, its memory or
its lost recall. HNSW parameters: M=32, efConstruction=80, efSearch=128 (HNSW_PARAMS); smaller
M and efConstruction built faster but lost recall. On clustered data (closer to real embeddings)
they keep recall@10 near 1; on uniformly random unit vectors, the worst case for every ANN method
(no neighbourhood structure to follow), no setting within the latency goal keeps recall up, since
finding neighbours that are barely nearer than everything else means reading most of the data,
which is what exact search does. The measured figures behind these choices, from
benchmarks/collection_search.py, are in docs/collections.md.

Keeping the index current (build.py calls `sync_index` after every build):
- faiss's HNSW cannot delete, so the index holds rows by label (the row's `seq`, stored in
  labels.npy beside it) and searches pass an allow-list bitmap that leaves out rows no longer
  in the collection (and rows a metadata filter excludes);
- new rows are added to the existing graph (HNSW insertion is incremental);
- when dead rows reach REBUILD_DEAD_FRACTION of the index, it is rebuilt from the live rows:
  past that, searching around a quarter of dead nodes costs more than a rebuild saves, and the
  graph's memory is mostly waste;
- a collection that shrinks below the threshold drops its index and goes back to exact search.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latentspace import atomic

EXACT_MAX_FLOATS = 20_000_000
REBUILD_DEAD_FRACTION = 0.25
INDEX_FILE = "hnsw.faiss"
LABELS_FILE = "labels.npy"
INFO_FILE = "index.json"


@dataclass(frozen=True)
class HnswParams:
    M: int = 32
    ef_construction: int = 80
    ef_search: int = 128


HNSW_PARAMS = HnswParams()


def use_ann(rows: int, dim: int, min_rows: int | None = None) -> bool:
    """Whether `rows` vectors of `dim` get an HNSW index: above EXACT_MAX_FLOATS, or from
    `min_rows` rows when a collection sets its own threshold (`--hnsw-min-rows`)."""
    return rows >= min_rows if min_rows is not None else rows * dim > EXACT_MAX_FLOATS


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first (ties broken by position: deterministic)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def exact_search(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, row positions) of the k rows of `vectors` nearest `query` by inner product."""
    scores = vectors @ query
    rows = top_k(scores, k)
    return scores[rows], rows


class HnswIndex:
    """faiss HNSW over some rows, each known by its label (seq)."""

    def __init__(self, index, labels: np.ndarray, params: HnswParams) -> None:
        self.index, self.labels, self.params = index, labels.astype(np.int64), params
        self.index.hnsw.efSearch = params.ef_search

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, labels: np.ndarray, params: HnswParams = HNSW_PARAMS) -> HnswIndex:
        import faiss

        index = faiss.IndexHNSWFlat(vectors.shape[1], params.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        out = cls(index, np.empty(0, dtype=np.int64), params)
        out.add(vectors, labels)
        return out

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            self.labels = np.concatenate([self.labels, labels.astype(np.int64)])

    def vectors(self) -> np.ndarray:
        """The indexed vectors, a read-only view of faiss's storage (no copy)."""
        import faiss

        storage = faiss.downcast_index(self.index.storage)
        n, d = self.index.ntotal, self.index.d
        if n == 0:
            return np.empty((0, d), dtype=np.float32)
        view = faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)
        view.flags.writeable = False
        return view

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, internal ids) of up to k allowed rows nearest `query`; `allowed` is a bool
        mask over internal ids (None: all)."""
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search or self.params.ef_search, k)
        bitmap = None
        if allowed is not None:
            bitmap = np.packbits(allowed.astype(bool), bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        scores, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k, params=params)
        del bitmap  # the selector reads it during search only
        found = ids[0] >= 0
        return scores[0][found], ids[0][found]

    # -- files --------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Index file and labels, then index.json last: index.json names the row count, so files
        from two different saves (a crash between renames) are detected and ignored."""
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        # Both are written before either replaces its old copy: the renames follow each other.
        with (
            atomic.replacing(directory / INDEX_FILE) as tmp_index,
            atomic.replacing(directory / LABELS_FILE) as tmp_labels,
        ):
            faiss.write_index(self.index, str(tmp_index))
            with open(tmp_labels, "wb") as f:
                np.save(f, self.labels)  # a file object: given a path, np.save would append ".npy" to it
        info = {"kind": "hnsw", "metric": "inner_product", "rows": len(self), "dim": self.dim, **asdict(self.params)}
        atomic.write_text(directory / INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> HnswIndex | None:
        """The saved index, or None when there is none or its files do not agree."""
        import faiss

        try:
            info = json.loads((directory / INFO_FILE).read_text())
            labels = np.load(directory / LABELS_FILE)
            index = faiss.read_index(str(directory / INDEX_FILE))
        except (OSError, ValueError, RuntimeError):
            return None
        if not (int(info.get("rows", -1)) == len(labels) == index.ntotal):
            return None
        params = HnswParams(
            M=int(info["M"]), ef_construction=int(info["ef_construction"]), ef_search=int(info["ef_search"])
        )
        return cls(index, labels, params)


def remove_index(directory: Path) -> None:
    for name in (INFO_FILE, INDEX_FILE, LABELS_FILE):
        (directory / name).unlink(missing_ok=True)
