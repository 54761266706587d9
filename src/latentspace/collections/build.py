"""Building a collection: scan a source, embed what is new, commit, update the index.

Why it is shaped this way:

The pieces, in the order a build uses them: settings.py (`BuildSettings`), plan.py (scan and
compare: the typed `Plan` of `Unit`s), engines.py (where units run: `LocalEngine` here,
`RayEngine` in ray_engine.py), unit.py (one unit -> one part), commit.py (staged parts into
place, the manifest, the index). This module runs them in order and counts what happened.

**Units.** The work is cut into units (plan.py), each a typed description saved as JSON: a
batch of up to `files_per_part` files (folder and table sources, in sorted key order) or one
shard. A unit becomes exactly one part file, through `embed_unit(unit, runtime, out_dir)`, a
function of the unit and the runtime's settings alone: the same unit gives the same part, byte
for byte, whoever runs it: this process (`engine="local"`), or an actor pool on Ray
(`engine="ray"`), which runs the same units from the same plan, so either engine can finish a
build the other started.

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

**Relevance.** Once the index is in line, the build brings the relevance calibration up to date
(relevance.py): the best score of each of a bank of generic queries over the collection, kept in
collection.json. It is recomputed only when the rows changed (a digest of their seq numbers),
so a build that finds nothing new skips it; it costs one pass over the vectors.

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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latentspace.collections import relevance, store
from latentspace.collections.commit import commit, stage_rewrites, sync_index
from latentspace.collections.engines import Engine, check_engine, open_engine
from latentspace.collections.plan import Plan, make_plan
from latentspace.collections.provenance import Provenance
from latentspace.collections.settings import BuildSettings
from latentspace.collections.sources import open_source
from latentspace.collections.unit import UnitRuntime, as_embedder, model_spec
from latentspace.models.embedder import Embedder
from latentspace.progress import NullProgress, Progress


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
    relevance: str = ""  # what the build did to the relevance calibration (relevance.refresh)
    relevance_seconds: float = 0.0
    resumed_plan: bool = False

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def count(self, plan: Plan) -> None:
        """Add what the plan's scan found."""
        for key, value in asdict(plan.counts).items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["directory"] = str(self.directory)
        out["images_per_second"] = round(self.images_per_second, 2)
        return out


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
    check_engine(engine)  # before any model is loaded: an unknown engine, or Ray missing
    directory = Path(directory)
    started = time.perf_counter()
    with store.build_lock(directory):
        manifest = store.Manifest.load(directory) if (directory / store.MANIFEST).is_file() else None
        pending = Plan.pending(directory)
        if source is None and pending is None and manifest is not None and len(manifest.sources) == 1:
            source = manifest.sources[0].location  # a rerun without --images updates the one source
        from_manifest = model is None
        if model is None:
            if manifest is None:
                raise store.CollectionError(
                    f"{directory} holds no collection yet: pass --model SPEC for the first build"
                )
            model = manifest.model
        spec = model_spec(model)
        embedder = _open_model(model, directory, from_manifest=from_manifest)
        embedder.require("image")
        manifest = _manifest(directory, manifest, embedder, spec, name, settings, pending)
        report = BuildReport(directory, manifest.name, str(manifest.identity))
        progress = progress or NullProgress()
        # Built before any plan is written: the runtime is chosen (measured, or read from the
        # cache) once, and its measured batch size is what the plan fixes when none was given.
        runtime = UnitRuntime(embedder, settings)
        settings = settings.but(batch_size=runtime.batch_size)
        runtime.settings = settings
        units_engine = open_engine(engine, runtime, ray_address=ray_address, ray_actors=ray_actors, log=log)
        identity = embedder.identity.to_dict()
        try:
            if pending is not None:
                pending.check_resumable(identity, directory)
                report.resumed_plan = True
                if manifest.source_index(pending.source_info.location) is None:
                    manifest.sources.append(pending.source_info)
                report.count(pending)
                # Resumed with the settings the plan was made with: they fix the part bytes.
                _carry_out(
                    directory,
                    manifest,
                    pending,
                    pending.settings_for(settings),
                    units_engine,
                    model,
                    report,
                    progress,
                    log,
                )
            if source is not None:
                src = open_source(source)
                index = manifest.source_index(src.location)
                if index is None:
                    manifest.sources.append(src)
                    index = len(manifest.sources) - 1
                plan = make_plan(directory, manifest, src, index, settings, spec, identity, manifest.dtype)
                report.count(plan)
                if report.resumed_plan:  # what the resumed plan embedded, this scan found unchanged
                    report.unchanged = max(0, report.unchanged - report.added - report.changed)
                plan.save(directory)
                _carry_out(directory, manifest, plan, settings, units_engine, model, report, progress, log)
        finally:
            runtime.close()
            units_engine.close()
        report.index = sync_index(directory, manifest)
        calibrating = time.perf_counter()
        report.relevance = relevance.refresh(directory, manifest, embedder)
        report.relevance_seconds = time.perf_counter() - calibrating
        report.skipped = len(store.read_skipped(directory))
        report.items = sum(p.rows for p in manifest.parts)
        report.seconds = time.perf_counter() - started
        return report


def _open_model(model: Embedder | str, directory: Path, *, from_manifest: bool) -> Embedder:
    """The model to build with. The collection's own (`from_manifest`) may be one that load()
    cannot open: a collection built from an Embedder object records only its name."""
    from latentspace.models.load import SpecError

    try:
        return as_embedder(model)
    except SpecError as e:
        if not from_manifest:
            raise
        raise store.CollectionError(
            f"the collection at {directory} records its model as {model!r}, which cannot be loaded ({e}); it was "
            "built from a model object, or its files moved: pass --model SPEC (a model of the same space)"
        ) from None


def _manifest(
    directory: Path,
    manifest: store.Manifest | None,
    embedder: Embedder,
    spec: str,
    name: str | None,
    settings: BuildSettings,
    pending: Plan | None,
) -> store.Manifest:
    """The collection's manifest, checked against the model and settings, or a new one."""
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
        dtype = pending.dtype if pending is not None else settings.dtype or "float32"
        manifest = store.Manifest(
            name=name or directory.name,
            model=spec,
            identity=embedder.identity,
            dtype=dtype,
            settings=settings.vector_settings(dtype).to_dict(),
        )
    if settings.hnsw_min_rows is not None:
        manifest.hnsw_min_rows = settings.hnsw_min_rows
    manifest.provenance = Provenance.for_build(embedder, manifest.provenance)  # a 0.4.0 collection's is filled
    return manifest


def _carry_out(
    directory: Path,
    manifest: store.Manifest,
    plan: Plan,
    settings: BuildSettings,
    engine: Engine,
    model: Embedder | str,
    report: BuildReport,
    progress: Progress,
    log: Callable[[str], None],
) -> None:
    """Embed the plan's pending units into staging/, stage its rewrites, commit."""
    if plan.missing_parts:
        log(
            f"{len(plan.missing_parts)} part(s) listed in {store.MANIFEST} are missing from "
            f"{store.PARTS}/ ({', '.join(plan.missing_parts)}): their items are embedded again"
        )
    staging = directory / store.STAGING
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.glob(".*.tmp-*"):  # a part that was in flight when a build died
        stale.unlink(missing_ok=True)
    todo = plan.todo(directory)
    resumed = len(plan.units) - len(todo)
    report.parts_resumed += resumed
    if resumed:
        log(f"resuming an interrupted build: {resumed} of {len(plan.units)} parts already done")
    if todo:
        engine.start(model, settings)  # e.g. Ray actors load the model before embedding is timed
        known = all(u.kind == "files" for u in todo)
        progress.start(sum(len(u.items) for u in todo) if known else None)
        started = time.perf_counter()
        try:
            for result in engine.run(todo, settings, staging, progress):
                report.parts_embedded += 1
                report.images_embedded += result.rows
                report.newly_skipped += len(result.skipped)
        finally:
            report.embed_seconds += time.perf_counter() - started
            progress.close()
    report.parts_rewritten += stage_rewrites(directory, plan)
    commit(directory, manifest, plan)
