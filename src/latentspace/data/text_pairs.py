"""Text-only pairs (query, positive) for the `+text` recipes.

Mixing a text-text contrastive loss into training keeps a trainable text tower close to what it
was good at. Pairs are read once into memory (text is small) from JSONL, Parquet or webdataset
shards, and each step draws its batch from a generator seeded by the step, so a resumed run draws
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from latentspace.data.shards import ErrorCounter, expand_urls, iter_raw_samples, sample_seed

_FIRST = ("query", "anchor", "question", "text1", "a")
_SECOND = ("positive", "document", "answer", "text2", "b")


def _pair_from(record, where: str) -> tuple[str, str] | None:
    """A pair from a JSON record: [a, b] or an object with a query-like and a positive-like key."""
    if isinstance(record, (list, tuple)) and len(record) >= 2:
        a, b = record[0], record[1]
    elif isinstance(record, dict):
        a = next((record[k] for k in _FIRST if k in record), None)
        b = next((record[k] for k in _SECOND if k in record), None)
    else:
        a = b = None
    if isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip():
        return a.strip(), b.strip()
    return None


def read_text_pairs(path: str) -> tuple[list[tuple[str, str]], int]:
    """-> (pairs, lines skipped as malformed). Raises ValueError when nothing usable is found."""
    source = Path(path).expanduser()
    skipped = 0
    pairs: list[tuple[str, str]] = []
    if source.suffix == ".parquet":
        pairs = _read_parquet(source)
    elif source.suffix in (".jsonl", ".json") or (source.is_file() and source.suffix != ".tar"):
        if not source.is_file():
            raise FileNotFoundError(f"text pairs file not found: {source}")
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                pair = _pair_from(json.loads(line), f"{source}:{n}")
            except json.JSONDecodeError:
                pair = None
            if pair is None:
                skipped += 1
            else:
                pairs.append(pair)
    else:  # webdataset shards: one json per sample holding a pair
        errors = ErrorCounter()
        for sample in iter_raw_samples(expand_urls(path), errors):
            try:
                pair = _pair_from(json.loads(sample.get("json", b"null")), sample.get("__key__", "?"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                pair = None
            if pair is None:
                skipped += 1
            else:
                pairs.append(pair)
        skipped += errors.count
    if len(pairs) < 2:
        raise ValueError(
            f"{path}: {len(pairs)} usable text pair(s) ({skipped} malformed); need at least 2. "
            "Each line/record must hold [a, b] or {'query': ..., 'positive': ...}"
        )
    return pairs, skipped


def _read_parquet(source: Path) -> list[tuple[str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading Parquet text pairs needs pyarrow: pip install pyarrow") from e
    if not source.is_file():
        raise FileNotFoundError(f"text pairs file not found: {source}")
    table = pq.read_table(source)
    names = [f.name for f in table.schema if str(f.type) in ("string", "large_string")]
    if len(names) < 2:
        raise ValueError(f"{source}: needs two string columns, found {table.schema.names}")
    first = next((n for n in _FIRST if n in names), names[0])
    second = next((n for n in _SECOND if n in names and n != first), next(n for n in names if n != first))
    return [
        (a, b)
        for a, b in zip(table.column(first).to_pylist(), table.column(second).to_pylist())
        if isinstance(a, str) and isinstance(b, str) and a.strip() and b.strip()
    ]


class TextPairs:
    def __init__(self, path: str, seed: int, ratio: float, batch_size: int):
        self.pairs, self.skipped = read_text_pairs(path)
        self.seed, self.ratio, self.batch_size = seed, ratio, min(batch_size, len(self.pairs))

    def __len__(self) -> int:
        return len(self.pairs)

    def is_text_step(self, step: int) -> bool:
        """Spreads text steps evenly: with ratio 0.25 every fourth step has one."""
        return math.floor((step + 1) * self.ratio) > math.floor(step * self.ratio)

    def batch(self, step: int) -> tuple[list[str], list[str]]:
        """Distinct pairs for `step`, the same every time it is asked for."""
        rng = random.Random(sample_seed(self.seed, step, 0x7E47))
        chosen = rng.sample(range(len(self.pairs)), self.batch_size)
        return [self.pairs[i][0] for i in chosen], [self.pairs[i][1] for i in chosen]
