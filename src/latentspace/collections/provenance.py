"""Provenance: what made a collection's vectors, recorded in its manifest (`Manifest.provenance`).

    query_prefix, document_prefix   the text the space's model puts before a query / a document
                                    ("" none; None: the model takes no such task type)
    preprocessing                   fingerprint -> how images became the model's input, as the
                                    model's own transform describes it (resize, crop, mean/std,
                                    input shape, transparency); usually one entry
    latentspace, libraries          the package version and the torch / OpenVINO / ONNX Runtime
                                    versions of the last build
    parts                           part name -> `PartProvenance`: the runtime(s) and precision
                                    that made its rows (resolved, never "auto": a part whose
                                    runtime fell back to PyTorch mid-way names both, with rows),
                                    the model spec, the versions, the preprocessing fingerprint

Every part also carries its own entry in its Parquet metadata (unit.py writes it), so a part
copied elsewhere still says what made it, and a build fills the manifest's entries from there.
A collection built before provenance was recorded (latentspace 0.4.0) has none: it opens as
before, `collection info` says "unknown", and its next build fills it in (older parts name the
runtime that made them in their metadata, without the versions).

What it is used for: searching refuses a query model of another space (store.check_space), and
a text query whose `search_query` prefix differs from the recorded one (`check_query_prefix`):
the same words with another prefix are another vector. A different runtime or precision within
the space is allowed (every runtime answers within cosine 0.999 of PyTorch fp32) and shown by
`collection info` (`made_by`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import latentspace
from latentspace.models.embedder import Embedder
from latentspace.runtime.machine import runtime_versions


def library_versions() -> dict[str, str | None]:
    """The runtimes' versions (None: not installed); torch's with its build (e.g. 2.5.1+cpu)."""
    import torch

    return {**runtime_versions(), "torch": torch.__version__}


def preprocessing_fingerprint(description: dict[str, Any]) -> str:
    """A short, stable name for one preprocessing description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PartProvenance:
    """What made one part's rows."""

    runtimes: dict[str, int]  # "runtime-precision" -> rows it made when the part was written
    model: str | None = None  # the model spec (None: unknown)
    latentspace: str | None = None  # the package version (None: a part written before 0.5)
    libraries: dict[str, str | None] = field(default_factory=dict)  # torch, openvino, onnxruntime
    preprocessing: str | None = None  # a fingerprint in Provenance.preprocessing

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtimes": dict(self.runtimes),
            "model": self.model,
            "latentspace": self.latentspace,
            "libraries": dict(self.libraries),
            "preprocessing": self.preprocessing,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartProvenance:
        return cls(
            runtimes={str(k): int(v) for k, v in d.get("runtimes", {}).items()},
            model=d.get("model"),
            latentspace=d.get("latentspace"),
            libraries=dict(d.get("libraries") or {}),
            preprocessing=d.get("preprocessing"),
        )

    @classmethod
    def from_part_info(cls, info: dict[str, Any], rows: int) -> PartProvenance:
        """From a part's Parquet metadata: its `provenance` (written since 0.5), else the
        `runtime` every part has named (a 0.4.0 part: no versions)."""
        if "provenance" in info:
            return cls.from_dict(info["provenance"])
        runtime = info.get("runtime") or "unknown"
        return cls({runtime: rows}, model=info.get("model"))


def part_provenance(model: Embedder, spec: str, made_by: dict[str, int]) -> dict[str, Any]:
    """What a new part records of what made it (unit.py puts it in the part's metadata)."""
    preprocessing = model.image_preprocessing()
    entry = PartProvenance(
        runtimes=made_by,
        model=spec,
        latentspace=latentspace.__version__,
        libraries=library_versions(),
        preprocessing=preprocessing_fingerprint(preprocessing),
    )
    return {**entry.to_dict(), "preprocessing_description": preprocessing}


def split_runtime(name: str) -> tuple[str, str]:
    """'openvino-int8' -> ('openvino', 'int8'); a name without a precision -> (name, 'unknown')."""
    runtime, sep, precision = name.rpartition("-")
    return (runtime, precision) if sep else (name, "unknown")


@dataclass
class Provenance:
    query_prefix: str | None
    document_prefix: str | None
    latentspace: str
    libraries: dict[str, str | None]
    preprocessing: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, PartProvenance] = field(default_factory=dict)

    @classmethod
    def for_build(cls, model: Embedder, previous: Provenance | None) -> Provenance:
        """The provenance a build with `model` records: prefixes and versions from this model and
        this process, the per-part entries of `previous` kept (parts are never re-made)."""
        text = "text" in model.modalities
        query = model.text_prefix("search_query") if text else None
        document = model.text_prefix("search_document") if text else None
        return cls(  # an image-only model (of the same space) keeps the prefixes recorded before
            query_prefix=query if query is not None or previous is None else previous.query_prefix,
            document_prefix=document if document is not None or previous is None else previous.document_prefix,
            latentspace=latentspace.__version__,
            libraries=library_versions(),
            preprocessing=dict(previous.preprocessing) if previous else {},
            parts=dict(previous.parts) if previous else {},
        )

    def record_part(self, name: str, info: dict[str, Any], rows: int) -> None:
        """Take a part's entry from its metadata (`info`), with its preprocessing description."""
        entry = PartProvenance.from_part_info(info, rows)
        self.parts[name] = entry
        description = info.get("provenance", {}).get("preprocessing_description")
        if entry.preprocessing is not None and description is not None:
            self.preprocessing[entry.preprocessing] = description

    def keep_only(self, names: Iterable[str]) -> None:
        """Drop the entries of parts no longer in the collection, and preprocessing none uses."""
        names = set(names)
        self.parts = {name: entry for name, entry in self.parts.items() if name in names}
        used = {entry.preprocessing for entry in self.parts.values()}
        self.preprocessing = {fp: d for fp, d in self.preprocessing.items() if fp in used}

    def made_by(self, part_rows: dict[str, int]) -> list[dict[str, Any]]:
        """The collection's rows grouped by what made them: runtime, precision, model, package and
        library versions, preprocessing; each group with its rows and parts. `part_rows`: each
        live part's current rows. A part that lost rows since it was written (rows deleted) and
        was made by two runtimes (a fall-back mid-part) has its rows shared out in proportion."""
        groups: dict[str, dict[str, Any]] = {}
        for name, rows in part_rows.items():
            entry = self.parts.get(name) or PartProvenance({"unknown": rows})
            total = sum(entry.runtimes.values()) or 1
            shares = (
                {next(iter(entry.runtimes)): rows}
                if len(entry.runtimes) == 1
                else {r: round(rows * n / total) for r, n in entry.runtimes.items()}
            )
            for runtime_name, n in shares.items():
                runtime, precision = split_runtime(runtime_name)
                group = {
                    "runtime": runtime,
                    "precision": precision,
                    "model": entry.model,
                    "latentspace": entry.latentspace,
                    "libraries": entry.libraries,
                    "preprocessing": entry.preprocessing,
                }
                key = json.dumps(group, sort_keys=True)
                found = groups.setdefault(key, {**group, "rows": 0, "parts": 0})
                found["rows"] += n
                found["parts"] += 1
        return sorted(groups.values(), key=lambda g: -g["rows"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "latentspace": self.latentspace,
            "libraries": dict(self.libraries),
            "preprocessing": self.preprocessing,
            "parts": {name: entry.to_dict() for name, entry in sorted(self.parts.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(
            query_prefix=d.get("query_prefix"),
            document_prefix=d.get("document_prefix"),
            latentspace=str(d.get("latentspace", "unknown")),
            libraries=dict(d.get("libraries") or {}),
            preprocessing={str(k): dict(v) for k, v in (d.get("preprocessing") or {}).items()},
            parts={str(k): PartProvenance.from_dict(v) for k, v in (d.get("parts") or {}).items()},
        )

    def summary(self, part_rows: dict[str, int]) -> dict[str, Any]:
        """What `collection info` shows: the prefixes, what made the rows, the preprocessing, the
        versions of the last build."""
        return {
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "made_by": self.made_by(part_rows),
            "preprocessing": self.preprocessing,
            "latentspace": self.latentspace,
            "libraries": self.libraries,
        }
