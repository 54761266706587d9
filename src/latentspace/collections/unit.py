"""Running one unit: read, decode and embed its items into one part file.

`embed_unit(unit, runtime, out_dir)` is a function of the unit and the runtime's settings alone:
the same unit gives the same part, byte for byte, whoever runs it (this process, or a Ray actor).
File reads, decoding and preprocessing run on a thread pool (PIL and torchvision's resize
release the GIL), a few batches ahead of the model; the batched forward runs on the calling
thread meanwhile, so the two overlap."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentspace.collections import store
from latentspace.collections.plan import Unit
from latentspace.collections.provenance import part_provenance
from latentspace.collections.settings import BuildSettings
from latentspace.collections.sources import MAX_ITEMS_PER_UNIT, Record, Skip, file_records, item_id, shard_records
from latentspace.data.fetch import BlockingFetcher, FetchPolicy, UrlRefused
from latentspace.data.images import IMAGE_FORMATS, decode_image
from latentspace.models.embedder import Embedder, finish
from latentspace.progress import NullProgress, Progress
from latentspace.runtime import on_runtimes

URL_THREADS = 16  # URL fetches mostly wait on the network: more threads than cores pay off


@dataclass
class PartResult:
    name: str
    rows: int
    skipped: list[dict[str, Any]]
    seconds: float


def model_spec(model: Embedder | str) -> str:
    """What a collection records as its model: the spec (a string, or the one `load()` opened an
    Embedder from), else the object's name (a model built another way cannot be reopened)."""
    return model if isinstance(model, str) else (model.spec or model.name)


def as_embedder(model: Embedder | str) -> Embedder:
    """`model` itself, or the model its spec names."""
    if isinstance(model, str):
        from latentspace.models.load import load

        return load(model)
    return model


class UnitRuntime:
    """What running units needs besides their descriptions: the model with its image forward on
    the runtime the settings ask for, the decode thread pool and the URL fetcher. One per build,
    or per actor; close it (or use it as a context manager) to end its threads."""

    def __init__(self, model: Embedder, settings: BuildSettings) -> None:
        model.require("image")
        self.model, self.settings = on_runtimes(model, image=settings.image), settings
        from latentspace.data.workers import available_cpus

        self.threads = settings.decode_threads or max(2, available_cpus())
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._urls: BlockingFetcher | None = None

    @property
    def batch_size(self) -> int:
        """The settings' batch size, else the one the runtime measured best."""
        return self.settings.batch_size or self.model.image_batch_size

    def pool(self, urls: bool) -> tuple[ThreadPoolExecutor, int]:
        size = max(self.threads, URL_THREADS) if urls else self.threads
        if size not in self._pools:
            self._pools[size] = ThreadPoolExecutor(size, thread_name_prefix="collection-decode")
        return self._pools[size], size

    def urls(self) -> BlockingFetcher | None:
        if self.settings.allow_urls and self._urls is None:
            self._urls = BlockingFetcher(FetchPolicy.with_limits(allowed_hosts=self.settings.url_allowed_hosts))
        return self._urls

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()
        if self._urls is not None:
            self._urls.close()
            self._urls = None

    def __enter__(self) -> UnitRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def embed_unit(unit: Unit, runtime: UnitRuntime, out_dir: Path, *, progress: Progress | None = None) -> PartResult:
    """Embed one unit into `out_dir/<unit part>.parquet` (written atomically) and return what
    it holds. The runtime must run the image runtime the unit was planned for."""
    if runtime.settings.image != unit.settings.image:
        raise ValueError(
            f"unit {unit.part} was planned for image runtime {unit.settings.image}, not {runtime.settings.image}"
        )
    started = time.perf_counter()
    columns, vectors, skipped, made_by = _run(unit, runtime, progress or NullProgress())
    info = {
        "model": unit.model,
        "identity": unit.identity,
        "dim": unit.dim,
        "dtype": unit.settings.dtype,
        "settings": unit.settings.to_dict(),
        "runtime": runtime.model.choices["image"].name,  # what made these vectors
        # ... in full: rows per runtime (two after a fall-back mid-part), versions, preprocessing
        "provenance": part_provenance(runtime.model, unit.model, made_by),
        "unit": unit.header(),
        "skipped": skipped,
    }
    rows = store.write_part(out_dir / f"{unit.part}.parquet", columns, vectors, unit.settings.dtype, info)
    return PartResult(unit.part, rows, skipped, time.perf_counter() - started)


@dataclass
class _Prepared:
    meta: dict[str, Any]
    pixels: torch.Tensor
    width: int
    height: int
    sha256: str
    size: int


def _prepare(record: Record, model: Embedder, max_pixels: int) -> _Prepared | str:
    """On a worker thread: read, hash, decode (with the pixel cap), preprocess. A str is the
    reason the item is skipped."""
    meta = record.meta
    name = meta.get("url") or (f"{meta['shard']}#{meta['key']}" if meta.get("shard") else meta["key"])
    try:
        data = record.read()  # type: ignore[misc]
    except UrlRefused as e:
        return f"URL refused: {e.reason}"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    try:
        image = decode_image(data, name=str(name), max_pixels=max_pixels, formats=IMAGE_FORMATS)
        pixels = model.preprocess_image(image)
    except Exception as e:  # never fatal: any image the model cannot take is skipped and listed
        return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    return _Prepared(record.meta, pixels, image.width, image.height, hashlib.sha256(data).hexdigest(), len(data))


def _records(unit: Unit, runtime: UnitRuntime) -> Iterator[Record]:
    if unit.shard is not None:
        return shard_records(unit.shard.url)
    return file_records(unit.items, runtime.urls())


def _run(
    unit: Unit, runtime: UnitRuntime, progress: Progress
) -> tuple[dict[str, list], np.ndarray, list[dict], dict[str, int]]:
    model, batch_size = runtime.model, unit.batch_size
    has_urls = any(item.url for item in unit.items)
    pool, threads = runtime.pool(has_urls)
    lookahead = max(2 * batch_size, 4 * threads)  # items being read/decoded ahead of the model
    records = iter(_records(unit, runtime))
    pending: deque[Future] = deque()
    columns: dict[str, list] = {name: [] for name in store.META_COLUMNS}
    chunks: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    batch: list[_Prepared] = []
    made_by: dict[str, int] = {}  # runtime-precision -> rows it made

    def top_up() -> None:
        while len(pending) < lookahead:
            record = next(records, None)
            if record is None:
                return
            if record.read is None:
                done: Future = Future()
                done.set_result(record.error or "unreadable")
                done.meta = record.meta  # type: ignore[attr-defined]
                pending.append(done)
            else:
                future = pool.submit(_prepare, record, model, unit.max_pixels)
                future.meta = record.meta  # type: ignore[attr-defined]
                pending.append(future)

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            rows = finish(model.image_rows(torch.stack([p.pixels for p in batch])))
        # read after the forward: a runtime that failed on this batch fell back, and PyTorch made it
        name = model.choices["image"].name
        made_by[name] = made_by.get(name, 0) + len(batch)
        chunks.append(rows.numpy().astype(np.float32, copy=False))
        for p in batch:
            _add_row(columns, unit, p)
        progress.advance(len(batch))
        batch.clear()

    top_up()
    while pending:
        future = pending.popleft()
        top_up()  # keep the pool busy while this item waits or the model runs
        result = future.result()
        if isinstance(result, str):
            skipped.append(_skip_entry(unit, future.meta, result))  # type: ignore[attr-defined]
            progress.advance(1)
            continue
        batch.append(result)
        if len(batch) == batch_size:
            flush()
    flush()
    vectors = np.concatenate(chunks) if chunks else np.empty((0, unit.dim), dtype=np.float32)
    return columns, vectors, skipped, made_by


def _add_row(columns: dict[str, list], unit: Unit, p: _Prepared) -> None:
    meta = p.meta
    position = meta["position"] if unit.kind == "shard" else meta["index"]
    if position >= MAX_ITEMS_PER_UNIT:
        raise ValueError(f"unit {unit.part} has more than {MAX_ITEMS_PER_UNIT} items; split the shard")
    key = meta["key"]
    ident_key = f"{meta['shard']}#{key}" if unit.kind == "shard" else key
    row = {
        "seq": store.seq_of(unit.ordinal, position),
        "id": item_id(unit.location, ident_key),
        "source": unit.source,
        "key": key,
        "path": meta.get("path"),
        "url": meta.get("url"),
        "shard": meta.get("shard"),
        "offset": meta.get("offset"),
        "length": meta.get("length"),
        "caption": meta.get("caption"),
        "width": p.width,
        "height": p.height,
        "sha256": p.sha256,
        "size": p.size,
        "mtime_ns": meta.get("mtime_ns"),
    }
    for name, value in row.items():
        columns[name].append(value)


def _skip_entry(unit: Unit, meta: dict[str, Any], reason: str) -> dict[str, Any]:
    key = f"{meta['shard']}#{meta['key']}" if unit.kind == "shard" else meta["key"]
    entry = Skip(
        key=key,
        reason=reason,
        path=meta.get("path"),
        url=meta.get("url"),
        shard=meta.get("shard"),
        size=meta.get("size"),
        mtime_ns=meta.get("mtime_ns"),
    ).to_dict()
    if unit.kind == "files":
        item = unit.items[meta["index"]]
        entry.update({k: v for k in ("size", "mtime_ns") if (v := getattr(item, k)) is not None})
    entry.update(source=unit.source, stage="read", part=unit.part)
    return entry
