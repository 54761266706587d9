"""Relevance: a search hit's cosine turned into a number in [0, 1] that one threshold can cut.

Cosines between a text and an image sit in a narrow band whose level moves per model and per
collection, so a `min_score` that fits one collection does not fit the next. A collection
therefore carries a calibration, computed when a build finishes (`refresh`, from build.py): a
bank of generic queries shipped with the package (relevance_bank.txt: a few hundred everyday
texts from many domains, none written for any collection) is embedded with the collection's
model as search queries, and each one's best score over the collection is kept, sorted: the
null, what the best match of a query looks like when the collection was not built for it.

A hit's relevance is the share of that null its score beats (`share_beaten`: the bank's sorted
best scores interpolated linearly, with exponential tails below the lowest and above the
highest, so it is continuous and strictly increasing). For a fixed query relevance is therefore
an increasing function of the score: it never reorders hits, and within one collection it ranks
queries exactly as their best cosine does; what it adds is a scale that means the same in every
collection ("better than 90% of generic queries' best matches here"), so one default bar serves
them all. Per-query standardisation (the score against the query's own score distribution over
the collection) was measured as well and separated present from absent concepts worse than the
raw score: docs/collections.md, "Relevance, measured" (benchmarks/search_relevance.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from latentspace.collections import store
from latentspace.models.embedder import Embedder

FORMAT = "latentspace.relevance/2"
# The default bar for `min_relevance`, chosen by benchmarks/search_relevance.py (docs/collections.md).
DEFAULT_MIN_RELEVANCE = 0.9
CHUNK = 8192  # rows per block while calibrating


def bank_texts() -> list[str]:
    """The generic queries whose best scores make the null (one a line in relevance_bank.txt)."""
    text = resources.files("latentspace.collections").joinpath("relevance_bank.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def bank_digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Calibration:
    """What a collection carries to turn its cosines into relevance (see the module docstring)."""

    rows: int  # the rows it was computed over
    over: str  # a digest of those rows' seq numbers: a build recomputes only when they changed
    bank: str  # the bank's digest (a new bank recomputes too)
    null: np.ndarray  # (bank,) each bank query's best score over the rows, sorted

    def relevance(self, scores: np.ndarray) -> np.ndarray:
        """Each score's relevance in [0, 1]: the share of the bank's best matches it beats."""
        return share_beaten(np.asarray(scores, dtype=np.float64), self.null)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rows": self.rows,
            "over": self.over,
            "bank": self.bank,
            "null": [round(float(v), 6) for v in self.null],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration | None:
        """The calibration, or None for one of another format (an older build: the next build
        recomputes it)."""
        if d.get("format") != FORMAT:
            return None
        return cls(rows=int(d["rows"]), over=d["over"], bank=d["bank"], null=np.sort(np.asarray(d["null"], float)))


def share_beaten(values: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The null's distribution function, made continuous and strictly increasing: a value of the
    null maps to the share of the null below it plus half the share equal to it (within 1e-6:
    ties are one point), linearly in between; below the lowest and above the highest the
    remaining share decays exponentially, with the null's standard deviation as the length
    scale, so scores beyond every bank match still keep their order."""
    values = np.asarray(values, dtype=np.float64)
    n = len(null)
    if n == 0:
        return np.full(values.shape, np.nan)
    null = np.sort(np.asarray(null, dtype=np.float64))
    xs, first, counts = np.unique(np.round(null, 6), return_index=True, return_counts=True)
    ps = (first + counts / 2) / n
    scale = max(float(null.std()), 1e-3)
    out = np.interp(values, xs, ps)
    low, high = values < xs[0], values > xs[-1]
    out[low] = ps[0] * np.exp((values[low] - xs[0]) / scale)
    out[high] = 1.0 - (1.0 - ps[-1]) * np.exp(-(values[high] - xs[-1]) / scale)
    return np.clip(out, 0.0, 1.0)


def calibrate(blocks: Iterable[np.ndarray], bank: np.ndarray, *, over: str, bank_id: str) -> Calibration | None:
    """One pass over the collection's rows (unit vectors, in blocks): each bank query's best
    score. None for a collection of fewer than 2 rows."""
    bank = np.asarray(bank, dtype=np.float32)
    rows = 0
    best = np.full(len(bank), -np.inf, dtype=np.float64)
    for block in blocks:
        for start in range(0, len(block), CHUNK):
            x = np.asarray(block[start : start + CHUNK], dtype=np.float32)
            if len(x):
                best = np.maximum(best, (bank @ x.T).max(axis=1))
                rows += len(x)
    if rows < 2:
        return None
    return Calibration(rows=rows, over=over, bank=bank_id, null=np.sort(best))


def rows_digest(seqs: np.ndarray) -> str:
    """What a calibration was computed over: the rows' seq numbers (an embedded version of an item)."""
    return hashlib.sha256(np.sort(np.asarray(seqs, dtype="<i8")).tobytes()).hexdigest()[:16]


def refresh(directory: Path, manifest: store.Manifest, embedder: Embedder) -> str:
    """Bring the manifest's calibration in line with the collection's rows (and save it); returns
    what it did, as a short phrase for the build report. A model without a text side, or a
    collection of fewer than 2 rows, has none (its hits carry no relevance)."""
    paths = [store.part_path(directory, p.name) for p in manifest.parts]
    seqs = store.read_meta(paths, ["seq"]).column("seq").to_numpy()
    texts = bank_texts()
    over, bank_id = rows_digest(seqs), bank_digest(texts)
    current = manifest.relevance
    if current is not None and (current.get("format"), current.get("over"), current.get("bank")) == (
        FORMAT,
        over,
        bank_id,
    ):
        return "up to date"
    if "text" not in embedder.modalities or len(seqs) < 2:
        manifest.relevance = None
        manifest.save(directory)
        return "none (the model embeds no text)" if "text" not in embedder.modalities else "none (under 2 rows)"
    bank = embedder.embed_texts(texts, "search_query").numpy()
    calibration = calibrate((store.read_vectors(p) for p in paths), bank, over=over, bank_id=bank_id)
    manifest.relevance = None if calibration is None else calibration.to_dict()
    manifest.save(directory)
    return f"calibrated over {len(seqs)} rows"
