"""Frozen-tower caption embeddings, computed once and memory-mapped from disk.

With the text tower locked, a caption's embedding never changes, so the training step only
looks vectors up. The cache lives in a folder named after the latent space and task type, so
vectors of two spaces can never be mixed. Writes are append-only and crash-safe: vectors are
flushed before the index lines that point at them, and a torn tail is trimmed on open.
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


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]


class TextEmbeddingCache:
    def __init__(self, root: str | Path, space: SpaceIdentity, task_type: str):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{space.name}-{space.dim}d-{space.fingerprint}-{task_type}")
        self.dir = Path(root) / safe
        self.dir.mkdir(parents=True, exist_ok=True)
        self.space, self.task_type, self.dim = space, task_type, space.dim
        self._vectors_path = self.dir / "vectors.f32"
        self._keys_path = self.dir / "keys.tsv"
        self._check_meta()
        self._rows = self._trim_torn_tail()
        self._index = self._read_index()
        self._mmap: np.memmap | None = None

    def _check_meta(self) -> None:
        meta_path = self.dir / "meta.json"
        meta = {"space": self.space.to_dict(), "task_type": self.task_type, "dtype": "float32"}
        if meta_path.is_file():
            found = json.loads(meta_path.read_text())
            if found != meta:
                raise SpaceMismatchError(
                    f"text cache {self.dir} belongs to {found}, not {meta}; delete it or use another cache dir"
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

    def __contains__(self, caption: str) -> bool:
        return caption_key(caption) in self._index

    def missing(self, captions: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for c in captions:
            k = caption_key(c)
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(c)
        return out

    def add(self, captions: Sequence[str], vectors: torch.Tensor) -> None:
        if vectors.shape != (len(captions), self.dim):
            raise ValueError(f"expected vectors of shape ({len(captions)}, {self.dim}), got {tuple(vectors.shape)}")
        start = self._rows
        with open(self._vectors_path, "ab") as f:
            f.write(vectors.detach().cpu().float().numpy().astype("<f4").tobytes())
            f.flush(), os.fsync(f.fileno())
        with open(self._keys_path, "a") as f:
            f.writelines(f"{caption_key(c)}\t{start + i}\n" for i, c in enumerate(captions))
            f.flush(), os.fsync(f.fileno())
        for i, c in enumerate(captions):
            self._index[caption_key(c)] = start + i
        self._rows += len(captions)
        self._mmap = None

    def fill(
        self,
        captions: Iterable[str],
        encode: Callable[[list[str]], torch.Tensor],
        *,
        batch_size: int = 256,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Embed and store every caption not cached yet; returns how many were added."""
        todo = self.missing(captions)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            self.add(chunk, encode(chunk))
            if on_progress:
                on_progress(len(chunk))
        return len(todo)

    def lookup(self, captions: Sequence[str]) -> torch.Tensor:
        """(N, D) vectors for captions that are all cached."""
        try:
            rows = np.array([self._index[caption_key(c)] for c in captions], dtype=np.int64)
        except KeyError:
            missing = self.missing(captions)
            raise KeyError(f"{len(missing)} caption(s) not in the text cache, e.g. {missing[0]!r}") from None
        if self._mmap is None:
            self._mmap = np.memmap(self._vectors_path, dtype="<f4", mode="r", shape=(self._rows, self.dim))
        return torch.from_numpy(np.ascontiguousarray(self._mmap[rows]))
