"""Embeddings of a frozen tower, computed once and memory-mapped from disk.

A frozen tower's output never changes, so the training step only looks its vectors up. Two
kinds of key share the format: captions (a frozen text tower's embeddings) and sample ids (a
frozen image tower's embeddings, or a frozen backbone's features, one row per training image).
Each cache lives in a folder named after the space of its vectors and its kind (the caption task
type, or "image"), so vectors of two spaces can never be mixed. Writes are append-only and
crash-safe: vectors are flushed before the index lines that point at them, and a torn tail is
trimmed on open.

On disk, a cache folder holds meta.json (space, task_type, dtype), vectors.f32 (little-endian
float32 rows) and keys.tsv (one "sha256-prefix-of-key TAB row" line per key).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from latentspace.space import SpaceIdentity, SpaceMismatchError


def row_key(key: str) -> str:
    """What the index stores for a key (a caption, or a sample id): a fixed-length hash."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """One frozen tower's vectors, keyed by caption or by sample id.

    `kind` is what the keys are: a text task type ("search_document", ...) for captions, or
    "image" for sample ids. It names the folder and is recorded in meta.json as task_type."""

    def __init__(self, root: str | Path, space: SpaceIdentity, kind: str):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{space.name}-{space.dim}d-{space.fingerprint}-{kind}")
        self.dir = Path(root) / safe
        self.dir.mkdir(parents=True, exist_ok=True)
        self.space, self.kind, self.dim = space, kind, space.dim
        self._vectors_path = self.dir / "vectors.f32"
        self._keys_path = self.dir / "keys.tsv"
        self._check_meta()
        self._rows = self._trim_torn_tail()
        self._index = self._read_index()
        self._mmap: np.memmap | None = None

    def _check_meta(self) -> None:
        meta_path = self.dir / "meta.json"
        # meta.json names the kind "task_type": the format stays as existing caches have it.
        meta = {"space": self.space.to_dict(), "task_type": self.kind, "dtype": "float32"}
        if meta_path.is_file():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise SpaceMismatchError(
                    f"embedding cache {self.dir} belongs to {found}, not {meta}; delete it or use another cache dir"
                )
        else:
            meta_path.write_text(json.dumps(meta, indent=1))

    def _trim_torn_tail(self) -> int:
        row_bytes = 4 * self.dim
        size = self._vectors_path.stat().st_size if self._vectors_path.exists() else 0
        if size % row_bytes:
            with open(self._vectors_path, "r+b") as f:
                f.truncate(size - size % row_bytes)
        return size // row_bytes

    def _read_index(self) -> dict[str, int]:
        index: dict[str, int] = {}
        if self._keys_path.exists():
            for line in self._keys_path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < self._rows:
                    index[parts[0]] = int(parts[1])
        return index

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return row_key(key) in self._index

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not cached yet, each once, in order."""
        seen: set[str] = set()
        out = []
        for key in keys:
            k = row_key(key)
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(key)
        return out

    def add(self, keys: Sequence[str], vectors: torch.Tensor) -> None:
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {tuple(vectors.shape)}")
        start = self._rows
        with open(self._vectors_path, "ab") as f:
            f.write(vectors.detach().cpu().float().numpy().astype("<f4").tobytes())
            f.flush(), os.fsync(f.fileno())
        with open(self._keys_path, "a") as f:
            f.writelines(f"{row_key(key)}\t{start + i}\n" for i, key in enumerate(keys))
            f.flush(), os.fsync(f.fileno())
        for i, key in enumerate(keys):
            self._index[row_key(key)] = start + i
        self._rows += len(keys)
        self._mmap = None

    def fill(
        self,
        keys: Iterable[str],
        encode: Callable[[list[str]], torch.Tensor],
        *,
        batch_size: int = 256,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Embed (`encode`: keys -> rows) and store every key not cached yet; returns how many were added."""
        todo = self.missing(keys)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            self.add(chunk, encode(chunk))
            if on_progress:
                on_progress(len(chunk))
        return len(todo)

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """(N, D) vectors for keys that are all cached."""
        try:
            rows = np.array([self._index[row_key(key)] for key in keys], dtype=np.int64)
        except KeyError:
            missing = self.missing(keys)
            example = missing[0]
            raise KeyError(f"{len(missing)} key(s) not in the embedding cache {self.dir}, e.g. {example!r}") from None
        if self._mmap is None:
            self._mmap = np.memmap(self._vectors_path, dtype="<f4", mode="r", shape=(self._rows, self.dim))
        return torch.from_numpy(np.ascontiguousarray(self._mmap[rows]))
