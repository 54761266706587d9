"""Committing a plan once its units are staged, and keeping the index in line with the parts.

Every step can be repeated, so a crash anywhere here is finished by the next build: staged parts
move into parts/, then skipped.jsonl and collection.json are rewritten atomically, then the plan
is deleted. Readers only trust collection.json, so they never see half a build."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from latentspace.collections import store
from latentspace.collections.index import REBUILD_DEAD_FRACTION, HnswIndex, remove_index, use_ann
from latentspace.collections.plan import Plan


def stage_rewrites(directory: Path, plan: Plan) -> int:
    """Write the plan's rewritten parts into staging/ (rows removed, file stats refreshed; the
    vectors copied, not recomputed); returns how many were written now."""
    staging, parts = directory / store.STAGING, directory / store.PARTS
    written = 0
    for name, change in plan.rewrites.items():
        src, dst = parts / f"{name}.parquet", staging / f"{name}.parquet"
        if dst.exists() or not src.exists():
            continue
        store.rewrite_part(src, dst, delete=set(change.delete), stats=change.stats)
        written += 1
    return written


def commit(directory: Path, manifest: store.Manifest, plan: Plan) -> None:
    """Move staged parts into place, then write skipped.jsonl and collection.json, then drop the
    plan."""
    staging, parts = directory / store.STAGING, directory / store.PARTS
    parts.mkdir(parents=True, exist_ok=True)
    for name in [u.part for u in plan.units] + list(plan.rewrites):
        staged = staging / f"{name}.parquet"
        if staged.exists():
            os.replace(staged, parts / f"{name}.parquet")
    for name in plan.drop_parts:
        (parts / f"{name}.parquet").unlink(missing_ok=True)

    # skipped.jsonl: other sources' entries as they were; this source's from the plan and units
    skipped = [s for s in store.read_skipped(directory) if s.get("source") != plan.source] + plan.skipped
    for unit in plan.units:
        skipped += store.read_part_info(parts / f"{unit.part}.parquet").get("skipped", [])
    store.write_skipped(directory, skipped)

    dropped = set(plan.drop_parts)
    entries = {p.name: p for p in manifest.parts if p.name not in dropped}
    for unit in plan.units:
        entries[unit.part] = store.PartEntry(unit.part, unit.ordinal, plan.source, unit.kind, shard=unit.shard)
    for name, entry in list(entries.items()):
        path = parts / f"{name}.parquet"
        rows = store.part_rows(path) if path.exists() else 0
        if name in plan.rewrites and rows == 0:  # every row of an old part left: drop the file
            path.unlink(missing_ok=True)
            del entries[name]
            continue
        entry.rows = rows
    manifest.parts = sorted(entries.values(), key=lambda p: p.ordinal)
    if manifest.provenance is not None:  # what made each part: the new ones, and any not yet recorded
        made = {unit.part for unit in plan.units}
        for entry in manifest.parts:
            if entry.name in made or entry.name not in manifest.provenance.parts:
                info = store.read_part_info(parts / f"{entry.name}.parquet")
                manifest.provenance.record_part(entry.name, info, entry.rows)
        manifest.provenance.keep_only(p.name for p in manifest.parts)
    manifest.next_ordinal = max(manifest.next_ordinal, plan.next_ordinal)
    manifest.counts = {
        "items": sum(p.rows for p in manifest.parts),
        "parts": len(manifest.parts),
        "skipped": len(skipped),
    }
    manifest.updated = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.save(directory)
    (directory / store.PLAN).unlink(missing_ok=True)
    if staging.exists() and not any(staging.iterdir()):
        staging.rmdir()


def sync_index(directory: Path, manifest: store.Manifest) -> str:
    """Bring index/ in line with the parts (see index.py for the policy); returns what it did,
    as a short phrase for the build report: "exact", or "hnsw (...)" with what changed."""
    paths = {p.name: store.part_path(directory, p.name) for p in manifest.parts}
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
