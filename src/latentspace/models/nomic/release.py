"""Which Nomic release a directory holds (v1 or v1.5), and what that means for its vectors.

The published config.json files of nomic-embed-text v1 and v1.5 are identical in shape, and so
are the vision ones; what differs is the embedding recipe (v1.5 layer-norms the pooled text
vector before Matryoshka truncation, v1 does not) and which text space a vision model belongs to
(vision v1.5 was trained into text v1.5's space, vision v1 into text v1's). The files cannot
tell the two apart by their tensors, so the release is read from the names the directory
carries.

The rule, first source that names a release wins:
  1. config.json `_name_or_path` (what `save_pretrained` records, e.g. "nomic-ai/nomic-embed-text-v1.5");
  2. the directory's path: its own name, or a parent's (a Hugging Face cache keeps the repository
     name two levels up: models--nomic-ai--nomic-embed-text-v1.5/snapshots/<hash>);
  3. the model card (README.md) naming nomic-embed-text-v1.5 / -v1 (or vision).
A name counts when it contains `nomic-embed-text-v1.5` (or `v1_5`), `nomic-embed-text-v1`, or the
same for vision; the directory's own name may also just end in `v1.5` / `v1`. When nothing
names a release (e.g. a nomic-bert-2048 checkpoint), the directory gets no release: the v1
recipe (no layer norm), its own directory name as space name, and a warning saying how to opt in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_FULL = re.compile(r"nomic-embed-(text|vision)-v1(?:[._]5)?(?![0-9])", re.IGNORECASE)
_BARE = re.compile(r"(?:^|[-_])v1(?:[._]5)?$", re.IGNORECASE)


@dataclass(frozen=True)
class NomicRelease:
    version: str  # "v1" | "v1.5"
    source: str  # where the version was read, for messages

    @property
    def text_name(self) -> str:
        return f"nomic-embed-text-{self.version}"

    @property
    def vision_name(self) -> str:
        return f"nomic-embed-vision-{self.version}"

    @property
    def layer_norm(self) -> bool:
        """v1.5's text recipe: mean pool -> layer norm (no affine) -> truncate -> normalise."""
        return self.version == "v1.5"


def _version(match: str) -> str:
    return "v1.5" if re.search(r"v1[._]5", match, re.IGNORECASE) else "v1"


def _from_full_names(text: str) -> str | None:
    found = _FULL.search(text)
    return _version(found.group(0)) if found else None


def detect_release(directory: str | Path) -> NomicRelease | None:
    """The release a Nomic directory holds, by the rule in the module docstring; None if nothing says."""
    directory = Path(directory).expanduser().resolve()
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    name_or_path = str(config.get("_name_or_path") or "") if isinstance(config, dict) else ""
    if version := _from_full_names(name_or_path):
        return NomicRelease(version, f"config.json _name_or_path {name_or_path!r}")
    if _BARE.search(directory.name):
        return NomicRelease(_version(directory.name), f"directory name {directory.name!r}")
    for part in (directory, *list(directory.parents)[:2]):
        if version := _from_full_names(part.name):
            return NomicRelease(version, f"directory name {part.name!r}")
    readme = directory / "README.md"
    if readme.is_file():
        head = readme.read_text(errors="replace")[:4000]
        if version := _from_full_names(head):
            return NomicRelease(version, "README.md")
    return None
