"""Building a collection: scan a source, embed what is new, commit, update the index.

Why it is shaped this way:

**Units.** The work is cut into units, each a plain JSON description: a batch of up to
`files_per_part` files (folder and table sources, in sorted key order) or one shard. A unit
becomes exactly one part file, through `embed_unit(unit, model, settings, out_dir)`, a function
of its arguments alone: the same unit gives the same part, byte for byte, whoever runs it: this
process (`engine="local"`), or an actor pool on Ray (`engine="ray"`, ray_engine.py), which runs
the same units from the same plan, so either engine can finish a build the other started.

**Plan, then execute, then commit.** A build first writes `plan.json`: the units to embed (with
their part names and ordinals fixed), the rows to remove, the skip list to keep. Then it embeds
the units one after another into `staging/` (each written to a temporary file and renamed), and
finally commits: staged parts move into `parts/`, `skipped.jsonl` and `collection.json` are
rewritten atomically, the plan is deleted. Readers only trust `collection.json`, so they never
see half a build.

**Resume.** After a crash (kill -9 included) the plan is still there. The next build finishes
it before anything else: units whose part exists are done, the rest are embedded (at most the
one in flight was lost). Since the plan fixed every unit's items and batch size, the resumed
build writes the same parts as an uninterrupted one would have. A committed part that is gone
from parts/ (deleted by hand, lost with a disk) is dropped from the manifest by the next build
and its items are embedded again, into a new part, like new items.

**Incremental.** The parts themselves are the manifest of what is embedded: their metadata
columns (key, size, mtime_ns, sha256, caption, seq) are read without the vectors, which is
cheap, and compared with a fresh scan of the source:

    new key                       -> embedded (new parts)
    same size and mtime           -> unchanged (never read)
    size or mtime differ          -> the file is hashed: same sha256 -> unchanged, and its new
                                     size/mtime are written into its row; else re-embedded
    caption differs (tables)      -> re-embedded (the row's metadata is stale)
    key gone from the source      -> its row leaves the collection
    URLs                          -> immutable by key (a changed image needs a new URL)
    shards                        -> per shard: same size and mtime -> unchanged; else the
                                     shard's part is dropped and the shard embedded again

A row leaves by rewriting its part without it (vectors copied, not recomputed), so the parts
always hold exactly the live collection: no tombstones for readers to apply. A part rewrite
copies at most `files_per_part` rows; the old file is replaced atomically at commit.

**Skipped items** (unreadable, empty, corrupt, not an image, over --max-pixels, refused URLs)
are never fatal: they are listed in skipped.jsonl with the reason. A skipped file is not read
again until its size or mtime changes; a skipped URL is retried by the next build (network
failures are often transient).

**Speed.** File reads, decoding and preprocessing run on a thread pool (PIL and torchvision's
resize release the GIL), a few batches ahead of the model; the model's batched forward runs on
the calling thread meanwhile, so the two overlap. The forward runs on the runtime layer's choice
(latentspace.runtime: `--image-runtime auto` by default, the fastest runtime within cosine 0.999
of PyTorch fp32, falling back to PyTorch if it fails), with its measured batch size unless
`--batch-size` is given; every part records the runtime that made its vectors. The CLI runs builds
with OMP_WAIT_POLICY=PASSIVE (unless set): OpenMP workers that spin between ops take the cores
the decoders need. Measured figures (benchmarks/collection_build.py): docs/collections.md.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentspace.collections import store
from latentspace.collections.index import REBUILD_DEAD_FRACTION, HnswIndex, remove_index, use_ann
from latentspace.collections.sources import (
    MAX_ITEMS_PER_UNIT,
    FileItem,
    Record,
    Skip,
    Source,
    UrlReader,
    file_records,
    item_id,
    open_source,
    scan,
    shard_records,
)
from latentspace.data.images import IMAGE_FORMATS, MAX_PIXELS, decode_image
from latentspace.models.embedder import Embedder, finish
from latentspace.progress import NullProgress, Progress
from latentspace.runtime import PRECISION_NAMES, RUNTIME_NAMES, RuntimeSettings, on_runtimes
from latentspace.space import SpaceIdentity

PLAN_FORMAT = "latentspace.collection-plan/1"
URL_THREADS = 16  # URL fetches mostly wait on the network: more threads than cores pay off


@dataclass(frozen=True)
class BuildSettings:
    """How a build runs. `dtype`, `image_runtime` and `image_precision` shape the stored vectors
    and are recorded in every part; `batch_size` (None: what the runtime measured best) and
    `files_per_part` fix part boundaries and batch composition, so a resumed build keeps the ones
    its plan was made with."""

    batch_size: int | None = None
    files_per_part: int = 1024
    dtype: str | None = None  # None: the collection's dtype, float32 for a new one
    max_pixels: int = MAX_PIXELS
    allow_urls: bool = False
    url_allowed_hosts: tuple[str, ...] = ()
    image_runtime: str = "auto"
    image_precision: str = "auto"
    decode_threads: int | None = None  # None: the CPUs this process may use
    hnsw_min_rows: int | None = None  # HNSW from this many rows (None: the collection's setting, else by size)

    def __post_init__(self) -> None:
        if (self.batch_size is not None and self.batch_size < 1) or self.files_per_part < 1:
            raise ValueError("batch_size and files_per_part must be at least 1")
        if self.files_per_part > MAX_ITEMS_PER_UNIT:
            raise ValueError(f"files_per_part must be at most {MAX_ITEMS_PER_UNIT}")
        if self.dtype is not None and self.dtype not in store.DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(store.DTYPES)}, not {self.dtype!r}")
        if self.image_runtime not in RUNTIME_NAMES or self.image_precision not in PRECISION_NAMES:
            raise ValueError(
                f"image_runtime must be one of {', '.join(RUNTIME_NAMES)} and image_precision one "
                f"of {', '.join(PRECISION_NAMES)}"
            )
        _ = self.image  # fails on a runtime and precision that do not go together

    @property
    def image(self) -> RuntimeSettings:
        return RuntimeSettings(runtime=self.image_runtime, precision=self.image_precision)  # type: ignore[arg-type]

    def vector_settings(self, dtype: str) -> dict[str, Any]:
        """What, besides the model, decided the stored numbers."""
        return {
            "dtype": dtype,
            "image_runtime": self.image_runtime,
            "image_precision": self.image_precision,
            "normalized": True,
        }


@dataclass
class PartResult:
    name: str
    rows: int
    skipped: list[dict[str, Any]]
    seconds: float


@dataclass
class BuildReport:
    directory: Path
    name: str
    space: str
    items: int = 0  # live rows after the build
    added: int = 0  # new items found (embedded, or skipped when unreadable)
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    refreshed: int = 0  # files whose mtime changed but not their bytes
    skipped: int = 0  # total listed in skipped.jsonl
    newly_skipped: int = 0
    parts_embedded: int = 0
    parts_resumed: int = 0  # done by an interrupted build, not redone
    parts_rewritten: int = 0
    images_embedded: int = 0
    seconds: float = 0.0  # the whole build, model loading included
    embed_seconds: float = 0.0  # embedding units only (what images/s is measured over)
    index: str = "exact"
    resumed_plan: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["directory"] = str(self.directory)
        out["images_per_second"] = round(self.images_per_second, 2)
        return out


def model_spec(model: Embedder | str) -> str:
    """What the manifest records as the model: the spec string, or an object's `spec`/`name`."""
    return model if isinstance(model, str) else str(getattr(model, "spec", None) or model.name)


def _load(model: Embedder | str) -> Embedder:
    if isinstance(model, str):
        from latentspace.models.load import load

        return load(model)
    return model


# --- one unit -> one part -----------------------------------------------------------------------


class UnitRuntime:
    """What running units needs besides their descriptions: the model with its image forward on
    the runtime the settings ask for, the decode thread pool and the URL fetcher. One per build,
    or per actor."""

    def __init__(self, model: Embedder, settings: BuildSettings) -> None:
        model.require("image")
        self.model, self.settings = on_runtimes(model, image=settings.image), settings
        from latentspace.data.workers import available_cpus

        self.threads = settings.decode_threads or max(2, available_cpus())
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._urls: UrlReader | None = None

    def pool(self, urls: bool) -> tuple[ThreadPoolExecutor, int]:
        size = max(self.threads, URL_THREADS) if urls else self.threads
        if size not in self._pools:
            self._pools[size] = ThreadPoolExecutor(size, thread_name_prefix="collection-decode")
        return self._pools[size], size

    def urls(self) -> UrlReader | None:
        if self.settings.allow_urls and self._urls is None:
            self._urls = UrlReader(self.settings.url_allowed_hosts)
        return self._urls

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()
        if self._urls is not None:
            self._urls.close()
            self._urls = None


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
    from latentspace.serve.fetch import UrlRefused

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


def _records(unit: dict[str, Any], runtime: UnitRuntime) -> Iterator[Record]:
    if unit["kind"] == "shard":
        return shard_records(unit["shard"]["url"])
    return file_records(unit["items"], runtime.urls())


def embed_unit(
    unit: dict[str, Any],
    model: Embedder | str,
    settings: BuildSettings,
    out_dir: Path,
    *,
    runtime: UnitRuntime | None = None,
    progress: Progress | None = None,
) -> PartResult:
    """Embed one unit into `out_dir/<unit part>.parquet` (written atomically) and return what
    it holds. `unit` is a description from a build plan; the part depends on nothing else."""
    own = runtime is None
    runtime = runtime or UnitRuntime(_load(model), settings)
    wanted = RuntimeSettings(runtime=unit["settings"]["image_runtime"], precision=unit["settings"]["image_precision"])
    if runtime.settings.image != wanted:
        raise ValueError(f"unit {unit['part']} was planned for image runtime {wanted}, not {runtime.settings.image}")
    progress = progress or NullProgress()
    started = time.perf_counter()
    try:
        columns, vectors, skipped = _run_unit(unit, runtime, progress)
    finally:
        if own:
            runtime.close()
    info = {
        "model": unit["model"],
        "identity": unit["identity"],
        "dim": unit["identity"]["dim"],
        "dtype": unit["settings"]["dtype"],
        "settings": unit["settings"],
        "runtime": runtime.model.choices["image"].name,  # what made these vectors
        "unit": {k: v for k, v in unit.items() if k not in ("items", "model", "identity", "settings")},
        "skipped": skipped,
    }
    rows = store.write_part(out_dir / f"{unit['part']}.parquet", columns, vectors, unit["settings"]["dtype"], info)
    return PartResult(unit["part"], rows, skipped, time.perf_counter() - started)


def _run_unit(
    unit: dict[str, Any], runtime: UnitRuntime, progress: Progress
) -> tuple[dict[str, list], np.ndarray, list[dict[str, Any]]]:
    model, batch_size = runtime.model, int(unit["batch_size"])
    has_urls = unit["kind"] == "files" and any(item.get("url") for item in unit["items"])
    pool, threads = runtime.pool(has_urls)
    lookahead = max(2 * batch_size, 4 * threads)  # items being read/decoded ahead of the model
    records = iter(_records(unit, runtime))
    pending: deque[Future] = deque()
    columns: dict[str, list] = {name: [] for name in store.META_COLUMNS}
    chunks: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    batch: list[_Prepared] = []

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
                future = pool.submit(_prepare, record, model, int(unit["max_pixels"]))
                future.meta = record.meta  # type: ignore[attr-defined]
                pending.append(future)

    def flush() -> None:
        if not batch:
            return
        with torch.inference_mode():
            rows = finish(model.image_rows(torch.stack([p.pixels for p in batch])))
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
    dim = int(unit["identity"]["dim"])
    vectors = np.concatenate(chunks) if chunks else np.empty((0, dim), dtype=np.float32)
    return columns, vectors, skipped


def _add_row(columns: dict[str, list], unit: dict[str, Any], p: _Prepared) -> None:
    meta = p.meta
    position = meta["position"] if unit["kind"] == "shard" else meta["index"]
    if position >= MAX_ITEMS_PER_UNIT:
        raise ValueError(f"unit {unit['part']} has more than {MAX_ITEMS_PER_UNIT} items; split the shard")
    key = meta["key"]
    ident_key = f"{meta['shard']}#{key}" if unit["kind"] == "shard" else key
    row = {
        "seq": store.seq_of(unit["ordinal"], position),
        "id": item_id(unit["location"], ident_key),
        "source": unit["source"],
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


def _skip_entry(unit: dict[str, Any], meta: dict[str, Any], reason: str) -> dict[str, Any]:
    key = f"{meta['shard']}#{meta['key']}" if unit["kind"] == "shard" else meta["key"]
    entry = Skip(
        key=key,
        reason=reason,
        path=meta.get("path"),
        url=meta.get("url"),
        shard=meta.get("shard"),
        size=meta.get("size"),
        mtime_ns=meta.get("mtime_ns"),
    ).to_dict()
    if unit["kind"] == "files":
        item = unit["items"][meta["index"]]
        entry.update({k: item[k] for k in ("size", "mtime_ns") if item.get(k) is not None})
    entry.update(source=unit["source"], stage="read", part=unit["part"])
    return entry


# --- planning -----------------------------------------------------------------------------------


def _live_rows(directory: Path, manifest: store.Manifest, source: int, missing: list[str]) -> dict[str, dict[str, Any]]:
    """key -> row metadata of the source's live rows (read from the parts, without vectors)."""
    paths = [
        directory / store.PARTS / f"{p['name']}.parquet"
        for p in manifest.parts
        if p["source"] == source and p["kind"] == "files" and p["name"] not in missing
    ]
    table = store.read_meta(paths, ["seq", "key", "caption", "size", "mtime_ns", "sha256", "url"])
    return {row["key"]: row for row in table.to_pylist()}


def _sha256_file(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _plan(
    directory: Path,
    manifest: store.Manifest,
    source: Source,
    source_index: int,
    settings: BuildSettings,
    spec: str,
    identity: dict[str, Any],
    dtype: str,
) -> dict[str, Any]:
    found = scan(source, allow_urls=settings.allow_urls)
    previous = [s for s in store.read_skipped(directory) if s.get("source") == source_index]
    counts = {"added": 0, "changed": 0, "removed": 0, "unchanged": 0, "refreshed": 0}
    rewrites: dict[str, dict[str, Any]] = {}
    # Committed parts gone from disk: dropped from the manifest, their items planned as new ones.
    missing = [
        p["name"]
        for p in manifest.parts
        if p["source"] == source_index and not (directory / store.PARTS / f"{p['name']}.parquet").exists()
    ]
    drop_parts: list[str] = list(missing)
    keep_skips: list[dict[str, Any]] = []
    unit_specs: list[tuple[str, Any]] = []  # ("files", [items]) or ("shard", shard item)

    def rewrite(seq: int) -> dict[str, Any]:
        return rewrites.setdefault(store.part_name(seq >> store.POSITION_BITS), {"delete": [], "stats": {}})

    if source.kind == "shards":
        embedded = {
            p["shard"]["url"]: p
            for p in manifest.parts
            if p["source"] == source_index and p["kind"] == "shard" and p["name"] not in missing
        }
        wanted = {s.url for s in found.shards}
        for shard in found.shards:
            part = embedded.get(shard.url)
            if part is not None and (part["shard"]["size"], part["shard"]["mtime_ns"]) == (shard.size, shard.mtime_ns):
                counts["unchanged"] += part["rows"]
                keep_skips += [s for s in previous if s.get("shard") == shard.url and s.get("stage") == "read"]
                continue
            if part is not None:
                drop_parts.append(part["name"])
                counts["changed"] += part["rows"]
            unit_specs.append(("shard", shard))
        for url, part in embedded.items():
            if url not in wanted:
                drop_parts.append(part["name"])
                counts["removed"] += part["rows"]
    else:
        live = _live_rows(directory, manifest, source_index, missing)
        skipped_files = {s["key"]: s for s in previous if s.get("stage") == "read" and not s.get("url")}
        pending: list[FileItem] = []
        for item in found.items:
            row = live.pop(item.key, None)
            if row is None:
                old = skipped_files.get(item.key)
                if old is not None and (old.get("size"), old.get("mtime_ns")) == (item.size, item.mtime_ns):
                    keep_skips.append(old)  # still the same bad file: not read again
                else:
                    pending.append(item)
                    counts["added"] += 1
                continue
            if row["caption"] != item.caption:
                pending.append(item)
                rewrite(row["seq"])["delete"].append(row["seq"])
                counts["changed"] += 1
            elif item.url is not None or (row["size"], row["mtime_ns"]) == (item.size, item.mtime_ns):
                counts["unchanged"] += 1
            elif item.path is not None and _sha256_file(item.path) == row["sha256"]:
                rewrite(row["seq"])["stats"][str(row["seq"])] = [item.size, item.mtime_ns]
                counts["refreshed"] += 1
            else:
                pending.append(item)
                rewrite(row["seq"])["delete"].append(row["seq"])
                counts["changed"] += 1
        for row in live.values():  # no longer in the source
            rewrite(row["seq"])["delete"].append(row["seq"])
            counts["removed"] += 1
        size = settings.files_per_part
        unit_specs += [("files", pending[i : i + size]) for i in range(0, len(pending), size)]

    vector_settings = settings.vector_settings(dtype)
    units = []
    for n, (kind, payload) in enumerate(unit_specs):
        ordinal = manifest.next_ordinal + n
        unit: dict[str, Any] = {
            "part": store.part_name(ordinal),
            "ordinal": ordinal,
            "kind": kind,
            "source": source_index,
            "location": source.location,
            "batch_size": settings.batch_size,
            "max_pixels": settings.max_pixels,
            "model": spec,
            "identity": identity,
            "settings": vector_settings,
        }
        if kind == "shard":
            unit["shard"] = asdict(payload)
        else:
            unit["items"] = [{**asdict(item), "index": i} for i, item in enumerate(payload)]
        units.append(unit)
    scan_skips = [{**s.to_dict(), "source": source_index, "stage": "scan"} for s in found.skipped]
    return {
        "format": PLAN_FORMAT,
        "source": source_index,
        "source_info": source.to_dict(),
        "model": spec,
        "identity": identity,
        "dtype": dtype,
        "settings": vector_settings,
        "batch_size": settings.batch_size,
        "files_per_part": settings.files_per_part,
        "max_pixels": settings.max_pixels,
        "units": units,
        "rewrites": rewrites,
        "drop_parts": drop_parts,
        "skipped": scan_skips + keep_skips,
        "counts": counts,
        "next_ordinal": manifest.next_ordinal + len(units),
        "missing_parts": missing,
    }


# --- executing and committing -------------------------------------------------------------------


# Runs units, each into `staging/<part>.parquet`, yielding each one's result as it is written (in
# any order): in this process (`_embed_here`) or on Ray actors (ray_engine.RayEngine.run).
UnitRunner = Callable[[list[dict[str, Any]], Path, Progress], Iterator[PartResult]]


def _embed_here(
    runtime: UnitRuntime, units: list[dict[str, Any]], staging: Path, progress: Progress
) -> Iterator[PartResult]:
    for n, unit in enumerate(units):
        progress.describe(f"part {n + 1}/{len(units)}")
        yield embed_unit(unit, runtime.model, runtime.settings, staging, runtime=runtime, progress=progress)


def _todo(directory: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's units whose part is neither staged nor committed yet."""
    staging, parts = directory / store.STAGING, directory / store.PARTS
    return [
        u
        for u in plan["units"]
        if not (staging / f"{u['part']}.parquet").exists() and not (parts / f"{u['part']}.parquet").exists()
    ]


def _execute(
    directory: Path,
    plan: dict[str, Any],
    run_units: UnitRunner,
    progress: Progress,
    report: BuildReport,
    log: Callable[[str], None],
) -> None:
    staging, parts = directory / store.STAGING, directory / store.PARTS
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.glob(".*.tmp-*"):  # a part that was in flight when a build died
        stale.unlink(missing_ok=True)
    todo = _todo(directory, plan)
    resumed = len(plan["units"]) - len(todo)
    report.parts_resumed += resumed
    if resumed:
        log(f"resuming an interrupted build: {resumed} of {len(plan['units'])} parts already done")
    if todo:
        known = all(u["kind"] == "files" for u in todo)
        progress.start(sum(len(u["items"]) for u in todo) if known else None)
    started = time.perf_counter()
    try:
        for result in run_units(todo, staging, progress) if todo else ():
            report.parts_embedded += 1
            report.images_embedded += result.rows
            report.newly_skipped += len(result.skipped)
    finally:
        report.embed_seconds += time.perf_counter() - started
        if todo:
            progress.close()
    for name, change in plan["rewrites"].items():
        src, dst = parts / f"{name}.parquet", staging / f"{name}.parquet"
        if dst.exists() or not src.exists():
            continue
        stats = {int(seq): (int(v[0]), int(v[1])) for seq, v in change["stats"].items()}
        store.rewrite_part(src, dst, delete=set(change["delete"]), stats=stats)
        report.parts_rewritten += 1


def _commit(directory: Path, manifest: store.Manifest, plan: dict[str, Any]) -> None:
    """Move staged parts into place, then write skipped.jsonl and collection.json, then drop the
    plan. Every step can be repeated, so a crash anywhere here is finished by the next build."""
    staging, parts = directory / store.STAGING, directory / store.PARTS
    parts.mkdir(parents=True, exist_ok=True)
    for name in [u["part"] for u in plan["units"]] + list(plan["rewrites"]):
        staged = staging / f"{name}.parquet"
        if staged.exists():
            os.replace(staged, parts / f"{name}.parquet")
    for name in plan["drop_parts"]:
        (parts / f"{name}.parquet").unlink(missing_ok=True)

    # skipped.jsonl: other sources' entries as they were; this source's from the plan and units
    source = plan["source"]
    skipped = [s for s in store.read_skipped(directory) if s.get("source") != source] + plan["skipped"]
    for unit in plan["units"]:
        skipped += store.read_part_info(parts / f"{unit['part']}.parquet").get("skipped", [])
    store.write_skipped(directory, skipped)

    dropped = set(plan["drop_parts"])
    entries = {p["name"]: p for p in manifest.parts if p["name"] not in dropped}
    for unit in plan["units"]:
        entry = {"name": unit["part"], "ordinal": unit["ordinal"], "source": source, "kind": unit["kind"]}
        if unit["kind"] == "shard":
            entry["shard"] = unit["shard"]
        entries[unit["part"]] = entry
    for name in list(entries):
        path = parts / f"{name}.parquet"
        rows = store.part_rows(path) if path.exists() else 0
        if name in plan["rewrites"] and rows == 0:  # every row of an old part left: drop the file
            path.unlink(missing_ok=True)
            del entries[name]
            continue
        entries[name]["rows"] = rows
    manifest.parts = sorted(entries.values(), key=lambda p: p["ordinal"])
    manifest.next_ordinal = max(manifest.next_ordinal, plan["next_ordinal"])
    manifest.counts = {
        "items": sum(p["rows"] for p in manifest.parts),
        "parts": len(manifest.parts),
        "skipped": len(skipped),
    }
    manifest.updated = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.save(directory)
    (directory / store.PLAN).unlink(missing_ok=True)
    if staging.exists() and not any(staging.iterdir()):
        staging.rmdir()


def sync_index(directory: Path, manifest: store.Manifest) -> str:
    """Bring index/ in line with the parts (see index.py for the policy); returns what it did."""
    paths = {p["name"]: directory / store.PARTS / f"{p['name']}.parquet" for p in manifest.parts}
    seqs = store.read_meta(paths.values(), ["seq"]).column("seq").to_numpy()
    index_dir = directory / store.INDEX
    for stale in index_dir.glob(".*.tmp-*"):  # files of a save that a crash cut short
        stale.unlink(missing_ok=True)
    if not use_ann(len(seqs), manifest.dim, manifest.hnsw_min_rows):
        if index_dir.exists():
            remove_index(index_dir)
        return "exact"
    index = HnswIndex.load(index_dir)
    if index is not None and index.dim == manifest.dim:
        indexed = np.isin(index.labels, seqs)
        missing = seqs[~np.isin(seqs, index.labels)]
        dead = int((~indexed).sum())
        if dead <= REBUILD_DEAD_FRACTION * (len(index) + len(missing)):
            if len(missing):
                index.add(_vectors_for(paths, missing), missing)
                index.save(index_dir)
                return f"hnsw (added {len(missing)} rows, {len(index)} in the index)"
            return f"hnsw ({len(index)} rows, up to date)"
    index = HnswIndex.build(_vectors_for(paths, seqs), seqs)
    index.save(index_dir)
    return f"hnsw (built over {len(index)} rows)"


def _vectors_for(paths: dict[str, Path], seqs: np.ndarray) -> np.ndarray:
    """The vectors of the given rows, in the order of `seqs`, read part by part."""
    order = np.argsort(seqs, kind="stable")
    out: list[np.ndarray] = []
    for ordinal in np.unique(seqs >> store.POSITION_BITS):
        path = paths[store.part_name(int(ordinal))]
        part_seqs = store.read_meta([path], ["seq"]).column("seq").to_numpy()
        wanted = np.sort(seqs[(seqs >> store.POSITION_BITS) == ordinal])
        positions = np.searchsorted(part_seqs, wanted)  # parts hold rows in seq order
        out.append(store.read_vectors(path, positions))
    vectors = np.concatenate(out)  # in sorted-seq order
    result = np.empty_like(vectors)
    result[order] = vectors
    return result


# --- the whole build ----------------------------------------------------------------------------


def build_collection(
    directory: str | Path,
    model: Embedder | str | None = None,
    source: str | Path | None = None,
    *,
    name: str | None = None,
    settings: BuildSettings = BuildSettings(),
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda line: None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> BuildReport:
    """Create or update the collection in `directory` from `source` with `model` (an Embedder
    or a spec; None: the collection's own). Finishes an interrupted build first. Refuses a
    model of another space. See the module docstring for what is (re)embedded.

    `engine` says where the units run: "local" (this process) or "ray" (an actor pool on the
    Ray cluster at `ray_address`, else a local Ray instance; `ray_actors` actors, see
    ray_engine.py). The plan, the parts and the commit are the same either way."""
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    ray_engine = None
    if engine == "ray":  # fails now if Ray is not installed; starts nothing until there are units to embed
        from latentspace.collections.ray_engine import RayEngine

        ray_engine = RayEngine(address=ray_address, actors=ray_actors, log=log)
    directory = Path(directory)
    started = time.perf_counter()
    with store.build_lock(directory):
        manifest_path = directory / store.MANIFEST
        manifest = store.Manifest.load(directory) if manifest_path.is_file() else None
        pending_plan = store.read_json(directory / store.PLAN) if (directory / store.PLAN).is_file() else None
        if source is None and pending_plan is None and manifest is not None and len(manifest.sources) == 1:
            source = manifest.sources[0]["location"]  # a rerun without --images updates the one source
        if model is None:
            if manifest is None:
                raise store.CollectionError(
                    f"{directory} holds no collection yet: pass --model SPEC for the first build"
                )
            model = manifest.model
        spec = model_spec(model)
        embedder = _load(model)
        embedder.require("image")
        identity = embedder.identity.to_dict()
        if manifest is not None:
            store.check_space(manifest, embedder.identity, what=f"model {spec!r}", directory=directory)
            if settings.dtype is not None and settings.dtype != manifest.dtype:
                raise store.CollectionError(
                    f"collection {manifest.name!r} stores {manifest.dtype} vectors; build it with --dtype "
                    f"{manifest.dtype} (or leave --dtype out), or build a new collection for {settings.dtype}"
                )
            if name is not None and name != manifest.name:
                raise store.CollectionError(f"{directory} holds collection {manifest.name!r}, not {name!r}")
        else:
            dtype = pending_plan["dtype"] if pending_plan is not None else settings.dtype or "float32"
            manifest = store.Manifest(
                name=name or directory.name,
                model=spec,
                identity=embedder.identity,
                dtype=dtype,
                settings=settings.vector_settings(dtype),
            )
        if settings.hnsw_min_rows is not None:
            manifest.hnsw_min_rows = settings.hnsw_min_rows
        dtype = manifest.dtype
        report = BuildReport(directory, manifest.name, str(manifest.identity))
        progress = progress or NullProgress()
        # Built before any plan is written: the runtime is chosen (measured, or read from the
        # cache) once, and its measured batch size is what the plan fixes when none was given.
        runtime: UnitRuntime | None = UnitRuntime(embedder, settings)
        if settings.batch_size is None:
            settings = replace(settings, batch_size=runtime.model.image_batch_size)
            runtime.settings = settings

        def run(plan: dict[str, Any], run_settings: BuildSettings) -> None:
            nonlocal runtime
            if plan.get("missing_parts"):
                log(
                    f"{len(plan['missing_parts'])} part(s) listed in {store.MANIFEST} are missing from "
                    f"{store.PARTS}/ ({', '.join(plan['missing_parts'])}): their items are embedded again"
                )
            run_units: UnitRunner
            if ray_engine is not None:
                if _todo(directory, plan):
                    ray_engine.start(model, run_settings)  # actors load the model before embedding is timed
                run_units = lambda units, staging, progress: ray_engine.run(units, run_settings, staging, progress)
            else:
                if plan["units"] and (runtime is None or runtime.settings != run_settings):
                    if runtime is not None:
                        runtime.close()
                    runtime = UnitRuntime(embedder, run_settings)
                run_units = lambda units, staging, progress: _embed_here(runtime, units, staging, progress)
            _execute(directory, plan, run_units, progress, report, log)
            _commit(directory, manifest, plan)

        try:
            if pending_plan is not None:
                _check_pending(pending_plan, identity, directory)
                report.resumed_plan = True
                if manifest.source_index(pending_plan["source_info"]["location"]) is None:
                    manifest.sources.append(pending_plan["source_info"])
                _count(report, pending_plan)
                # Resume with the settings the plan was made with: they fix the part bytes.
                run(
                    pending_plan,
                    BuildSettings(
                        batch_size=pending_plan["batch_size"],
                        files_per_part=pending_plan["files_per_part"],
                        dtype=pending_plan["dtype"],
                        max_pixels=pending_plan["max_pixels"],
                        allow_urls=settings.allow_urls,
                        url_allowed_hosts=settings.url_allowed_hosts,
                        image_runtime=pending_plan["settings"]["image_runtime"],
                        image_precision=pending_plan["settings"]["image_precision"],
                        decode_threads=settings.decode_threads,
                    ),
                )
            if source is not None:
                src = open_source(source)
                index = manifest.source_index(src.location)
                if index is None:
                    manifest.sources.append(src.to_dict())
                    index = len(manifest.sources) - 1
                plan = _plan(directory, manifest, src, index, settings, spec, identity, dtype)
                _count(report, plan)
                if report.resumed_plan:  # what the resumed plan embedded, this scan found unchanged
                    report.unchanged = max(0, report.unchanged - report.added - report.changed)
                store.write_json(directory / store.PLAN, plan)
                run(plan, settings)
        finally:
            if runtime is not None:
                runtime.close()
            if ray_engine is not None:
                ray_engine.close()
        report.index = sync_index(directory, manifest)
        skipped = store.read_skipped(directory)
        report.skipped = len(skipped)
        report.items = sum(p["rows"] for p in manifest.parts)
        report.seconds = time.perf_counter() - started
        return report


def _check_pending(plan: dict[str, Any], identity: dict[str, Any], directory: Path) -> None:
    if plan.get("format") != PLAN_FORMAT:
        raise store.CollectionError(f"{directory / store.PLAN} is not a build plan of format {PLAN_FORMAT}")
    if plan["identity"] != identity:
        raise store.CollectionSpaceError(
            f"an interrupted build of {directory} with model {plan['model']!r} (space "
            f"{SpaceIdentity.from_dict(plan['identity'])}) is pending, and the model given is in another space; "
            f"finish it with that model first (rerun the build with --model {plan['model']!r})"
        )


def _count(report: BuildReport, plan: dict[str, Any]) -> None:
    for key, value in plan["counts"].items():
        setattr(report, key, getattr(report, key) + value)
