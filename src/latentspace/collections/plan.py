"""Planning a build: compare a fresh scan of a source with what the collection holds, and write
down the work as a `Plan` of `Unit`s (the build's module docstring says what is re-embedded when).

A plan is saved as plan.json before anything is embedded, and a unit is everything one part
depends on, so a build killed at any point is finished by the next one, on either engine, with
the same bytes. Both are typed here and read and written as JSON (`to_dict` / `from_dict`)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from latentspace.collections import store
from latentspace.collections.settings import BuildSettings, VectorSettings
from latentspace.collections.sources import FileItem, ShardItem, Source, scan
from latentspace.space import SpaceIdentity

PLAN_FORMAT = "latentspace.collection-plan/1"
UnitKind = Literal["files", "shard"]


@dataclass
class Unit:
    """One part's worth of work: up to `files_per_part` files of a folder or table source, or
    one shard. The part it becomes depends on these fields alone."""

    part: str
    ordinal: int
    kind: UnitKind
    source: int  # the source's index in the manifest
    location: str  # the source's stable identity (ids are hashes of location and key)
    batch_size: int
    max_pixels: int
    model: str
    identity: dict[str, Any]
    settings: VectorSettings
    items: list[FileItem] = field(default_factory=list)  # a files unit's items, in order
    shard: ShardItem | None = None  # a shard unit's shard

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def describe(self) -> str:
        """What the unit holds, for messages: the shard, or the count and first/last keys."""
        if self.shard is not None:
            return f"shard {self.shard.url}"
        first, last = self.items[0].key, self.items[-1].key
        return f"{len(self.items)} file(s), {first}" + (f" .. {last}" if last != first else "")

    def header(self) -> dict[str, Any]:
        """What a part records of the unit that made it (its items are the part's rows)."""
        out: dict[str, Any] = {
            "part": self.part,
            "ordinal": self.ordinal,
            "kind": self.kind,
            "source": self.source,
            "location": self.location,
            "batch_size": self.batch_size,
            "max_pixels": self.max_pixels,
        }
        if self.shard is not None:
            out["shard"] = asdict(self.shard)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = {**self.header(), "model": self.model, "identity": self.identity, "settings": self.settings.to_dict()}
        if self.kind == "files":
            out["items"] = [{**asdict(item), "index": i} for i, item in enumerate(self.items)]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        items = [FileItem(**{k: v for k, v in item.items() if k != "index"}) for item in d.get("items", [])]
        return cls(
            part=d["part"],
            ordinal=int(d["ordinal"]),
            kind=d["kind"],
            source=int(d["source"]),
            location=d["location"],
            batch_size=int(d["batch_size"]),
            max_pixels=int(d["max_pixels"]),
            model=d["model"],
            identity=d["identity"],
            settings=VectorSettings.from_dict(d["settings"]),
            items=items,
            shard=ShardItem(**d["shard"]) if d.get("shard") else None,
        )


@dataclass
class Rewrite:
    """Changes to one committed part: rows to delete, rows whose file stat changed (same bytes)."""

    delete: list[int] = field(default_factory=list)
    stats: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (size, mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"delete": self.delete, "stats": {str(seq): list(stat) for seq, stat in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rewrite:
        stats = {int(seq): (int(v[0]), int(v[1])) for seq, v in d.get("stats", {}).items()}
        return cls([int(s) for s in d.get("delete", [])], stats)


@dataclass
class Counts:
    """What the scan found, item by item (a shard counts its rows)."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    refreshed: int = 0  # files whose mtime changed but not their bytes


@dataclass
class Plan:
    """One source's update: the units to embed, the committed parts to rewrite or drop, and the
    skip list to keep. Made by `make_plan`, saved as plan.json, carried out by the build."""

    source: int
    source_info: Source
    model: str
    identity: dict[str, Any]
    dtype: str
    settings: VectorSettings
    batch_size: int
    files_per_part: int
    max_pixels: int
    units: list[Unit]
    rewrites: dict[str, Rewrite]
    drop_parts: list[str]
    skipped: list[dict[str, Any]]
    counts: Counts
    next_ordinal: int
    missing_parts: list[str]  # committed parts found gone from disk (their items are embedded again)

    def todo(self, directory: Path) -> list[Unit]:
        """The units whose part is neither staged nor committed yet."""
        staging, parts = directory / store.STAGING, directory / store.PARTS
        return [
            u
            for u in self.units
            if not (staging / f"{u.part}.parquet").exists() and not (parts / f"{u.part}.parquet").exists()
        ]

    def settings_for(self, settings: BuildSettings) -> BuildSettings:
        """`settings` with what fixes the part bytes taken from this plan (to resume it)."""
        return settings.but(
            batch_size=self.batch_size,
            files_per_part=self.files_per_part,
            dtype=self.dtype,
            max_pixels=self.max_pixels,
            image_runtime=self.settings.image_runtime,
            image_precision=self.settings.image_precision,
        )

    def check_resumable(self, identity: dict[str, Any], directory: Path) -> None:
        if self.identity != identity:
            raise store.CollectionSpaceError(
                f"an interrupted build of {directory} with model {self.model!r} (space "
                f"{SpaceIdentity.from_dict(self.identity)}) is pending, and the model given is in another space; "
                f"finish it with that model first (rerun the build with --model {self.model!r})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "source": self.source,
            "source_info": self.source_info.to_dict(),
            "model": self.model,
            "identity": self.identity,
            "dtype": self.dtype,
            "settings": self.settings.to_dict(),
            "batch_size": self.batch_size,
            "files_per_part": self.files_per_part,
            "max_pixels": self.max_pixels,
            "units": [u.to_dict() for u in self.units],
            "rewrites": {name: r.to_dict() for name, r in self.rewrites.items()},
            "drop_parts": self.drop_parts,
            "skipped": self.skipped,
            "counts": asdict(self.counts),
            "next_ordinal": self.next_ordinal,
            "missing_parts": self.missing_parts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if d.get("format") != PLAN_FORMAT:
            raise store.CollectionError(f"not a build plan of format {PLAN_FORMAT} (found {d.get('format')!r})")
        return cls(
            source=int(d["source"]),
            source_info=Source.from_dict(d["source_info"]),
            model=d["model"],
            identity=d["identity"],
            dtype=d["dtype"],
            settings=VectorSettings.from_dict(d["settings"]),
            batch_size=int(d["batch_size"]),
            files_per_part=int(d["files_per_part"]),
            max_pixels=int(d["max_pixels"]),
            units=[Unit.from_dict(u) for u in d["units"]],
            rewrites={name: Rewrite.from_dict(r) for name, r in d["rewrites"].items()},
            drop_parts=list(d["drop_parts"]),
            skipped=list(d["skipped"]),
            counts=Counts(**d["counts"]),
            next_ordinal=int(d["next_ordinal"]),
            missing_parts=list(d.get("missing_parts", [])),
        )

    def save(self, directory: Path) -> None:
        store.write_json(directory / store.PLAN, self.to_dict())

    @classmethod
    def pending(cls, directory: Path) -> Plan | None:
        """The plan an interrupted build left in `directory`, if any."""
        path = directory / store.PLAN
        if not path.is_file():
            return None
        try:
            return cls.from_dict(store.read_json(path))
        except store.CollectionError as e:
            raise store.CollectionError(f"{path}: {e}") from None


def make_plan(
    directory: Path,
    manifest: store.Manifest,
    source: Source,
    source_index: int,
    settings: BuildSettings,
    spec: str,
    identity: dict[str, Any],
    dtype: str,
) -> Plan:
    """Scan `source` and plan what makes the collection match it (`settings.batch_size` is set)."""
    if settings.batch_size is None:
        raise ValueError("make_plan needs a batch size: the runtime's measured one, or the user's")
    found = scan(source, allow_urls=settings.allow_urls)
    previous = [s for s in store.read_skipped(directory) if s.get("source") == source_index]
    counts = Counts()
    rewrites: dict[str, Rewrite] = {}
    # Committed parts gone from disk: dropped from the manifest, their items planned as new ones.
    missing = [
        p.name for p in manifest.parts if p.source == source_index and not store.part_path(directory, p.name).exists()
    ]
    drop_parts: list[str] = list(missing)
    keep_skips: list[dict[str, Any]] = []
    work: list[list[FileItem] | ShardItem] = []  # each becomes one unit

    def rewrite(seq: int) -> Rewrite:
        return rewrites.setdefault(store.part_name(seq >> store.POSITION_BITS), Rewrite())

    if source.kind == "shards":
        embedded = {
            p.shard.url: p
            for p in manifest.parts
            if p.source == source_index and p.shard is not None and p.name not in missing
        }
        wanted = {s.url for s in found.shards}
        for shard in found.shards:
            part = embedded.get(shard.url)
            if part is not None and part.shard == shard:  # same url, size and mtime
                counts.unchanged += part.rows
                keep_skips += [s for s in previous if s.get("shard") == shard.url and s.get("stage") == "read"]
                continue
            if part is not None:
                drop_parts.append(part.name)
                counts.changed += part.rows
            work.append(shard)
        for url, part in embedded.items():
            if url not in wanted:
                drop_parts.append(part.name)
                counts.removed += part.rows
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
                    counts.added += 1
                continue
            if row["caption"] != item.caption:
                pending.append(item)
                rewrite(row["seq"]).delete.append(row["seq"])
                counts.changed += 1
            elif item.url is not None or (row["size"], row["mtime_ns"]) == (item.size, item.mtime_ns):
                counts.unchanged += 1
            elif item.path is not None and _sha256_file(item.path) == row["sha256"]:
                rewrite(row["seq"]).stats[row["seq"]] = (item.size or 0, item.mtime_ns or 0)
                counts.refreshed += 1
            else:
                pending.append(item)
                rewrite(row["seq"]).delete.append(row["seq"])
                counts.changed += 1
        for row in live.values():  # no longer in the source
            rewrite(row["seq"]).delete.append(row["seq"])
            counts.removed += 1
        size = settings.files_per_part
        work += [pending[i : i + size] for i in range(0, len(pending), size)]

    vectors = settings.vector_settings(dtype)
    units = []
    for n, payload in enumerate(work):
        ordinal = manifest.next_ordinal + n
        whole_shard = payload if isinstance(payload, ShardItem) else None
        units.append(
            Unit(
                part=store.part_name(ordinal),
                ordinal=ordinal,
                kind="shard" if whole_shard is not None else "files",
                source=source_index,
                location=source.location,
                batch_size=settings.batch_size,
                max_pixels=settings.max_pixels,
                model=spec,
                identity=identity,
                settings=vectors,
                items=payload if isinstance(payload, list) else [],
                shard=whole_shard,
            )
        )
    scan_skips = [{**s.to_dict(), "source": source_index, "stage": "scan"} for s in found.skipped]
    return Plan(
        source=source_index,
        source_info=source,
        model=spec,
        identity=identity,
        dtype=dtype,
        settings=vectors,
        batch_size=settings.batch_size,
        files_per_part=settings.files_per_part,
        max_pixels=settings.max_pixels,
        units=units,
        rewrites=rewrites,
        drop_parts=drop_parts,
        skipped=scan_skips + keep_skips,
        counts=counts,
        next_ordinal=manifest.next_ordinal + len(units),
        missing_parts=missing,
    )


def _live_rows(directory: Path, manifest: store.Manifest, source: int, missing: list[str]) -> dict[str, dict[str, Any]]:
    """key -> row metadata of the source's live rows (read from the parts, without vectors)."""
    paths = [
        store.part_path(directory, p.name)
        for p in manifest.parts
        if p.source == source and p.kind == "files" and p.name not in missing
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
