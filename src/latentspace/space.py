"""Latent-space identity: which text model (and settings) a vector belongs to.

A text model defines a space. Two vectors are only comparable when they come from the same
space, so every vision model records the identity of the text tower it was trained into, and the
library refuses to pair models whose identities differ.

The fingerprint covers everything that changes the vectors: weights, tokenizer files, pooling,
layer norm, output dimension, prefixes and token limit. The readable name is only for people.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class SpaceIdentity:
    name: str
    fingerprint: str
    dim: int

    def __str__(self) -> str:
        return f"{self.name}-{self.dim}d@{self.fingerprint}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpaceIdentity:
        return cls(name=str(d["name"]), fingerprint=str(d["fingerprint"]), dim=int(d["dim"]))


class SpaceMismatchError(ValueError):
    """Raised when embeddings or models from two different latent spaces are combined."""


def check_same_space(expected: SpaceIdentity, actual: SpaceIdentity, *, what: str = "model") -> None:
    if expected == actual:
        return
    diffs = [
        f"{field}: {getattr(expected, field)!r} != {getattr(actual, field)!r}"
        for field in ("name", "fingerprint", "dim")
        if getattr(expected, field) != getattr(actual, field)
    ]
    raise SpaceMismatchError(
        f"{what} was trained into latent space {expected} but the text model given is {actual} "
        f"({'; '.join(diffs)}). Embeddings from different spaces are not comparable: load the text model "
        "the vision model was trained with, or train a vision model for this text model."
    )


def hash_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of tensor names, dtypes, shapes and values: the same weights give the same hash
    whatever file format they were stored in."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return h.hexdigest()


def hash_files(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode() + b"|")
        h.update(p.read_bytes())
    return h.hexdigest()


def fingerprint(settings: Mapping[str, Any]) -> str:
    """Short, stable fingerprint of a JSON-serialisable description."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
