"""Test helpers for collections: a colour model with known rankings, and drawings on disk.

(A module of its own, not conftest.py: `import conftest` finds whichever conftest pytest
imported first.)

`ColourModel` is a real Embedder (its steps run through the same build pipeline as any model),
that sees colour only: an image embeds as its mean chroma (each pixel's RGB minus its grey
level, so the white background the drawings sit on counts for nothing), a text as the RGB of the
first colour it names. A fourth dimension keeps grey images and colourless texts non-zero. So
"red" ranks red drawings first by construction.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentspace.collections import BuildSettings
from latentspace.models.embedder import Embedder
from latentspace.space import SpaceIdentity

import fakes

# The build settings most collection tests use: parts of 5 files (the library's 12 drawings make
# 3 parts), batches of 4, and a pixel cap that the library's huge.png is over.
SETTINGS = BuildSettings(max_pixels=10_000, files_per_part=5, batch_size=4)

TEXT_COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}


class ColourModel(Embedder):
    kind = "test-colour"
    name = "colour"
    modalities = ("text", "image")

    def __init__(self, fingerprint: str = "c010c010c010c010", delay: float = 0.0) -> None:
        self.identity = SpaceIdentity("colour-space", fingerprint, 4)
        self.delay = delay

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        small = image.convert("RGB").resize((16, 16), Image.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32)).permute(2, 0, 1) / 255

    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.delay:
            import time

            time.sleep(self.delay)
        chroma = (pixels - pixels.min(dim=1, keepdim=True).values).mean(dim=(2, 3))
        return torch.cat([chroma, torch.full((len(pixels), 1), 0.02)], dim=1)

    @property
    def image_module(self) -> torch.nn.Module:
        raise NotImplementedError

    def embed_texts(self, texts, task_type="search_query", **kwargs) -> torch.Tensor:
        self.last_task_type = task_type
        rows = []
        for text in texts:
            colour = next((TEXT_COLOURS[w] for w in text.lower().split() if w in TEXT_COLOURS), (0.0, 0.0, 0.0))
            rows.append([*colour, 0.02])
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def save_drawing(path: Path, concept: str, style: int = 0, size: int = 48, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = fakes.draw(concept, size=size, style=style)
    if fmt == "JPEG":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        image = canvas
    image.save(path, format=fmt)
    return path


def kill_halfway(job, out: Path, parts: int, timeout: float) -> dict[str, int]:
    """SIGKILL a build `job` once half of its `parts` are staged (the next unit is blocked on a
    pipe, so no more arrive), check it died mid-build, and return the staged parts' inodes."""
    staging = out / "staging"
    try:
        deadline = time.monotonic() + timeout
        while len(list(staging.glob("part-*.parquet"))) < parts // 2:
            assert job.poll() is None, job.stderr.read().decode()
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.01)
        time.sleep(0.3)  # the build is blocked on the pipe: nothing more gets staged
    finally:
        # Killed on success and on a failed check alike: a build left blocked on the pipe would
        # hold its collection's lock and hang the tests after this one.
        if job.poll() is None:
            job.send_signal(signal.SIGKILL)
        job.wait(30)
    assert job.returncode == -signal.SIGKILL
    assert (out / "plan.json").exists() and not (out / "collection.json").exists()
    done_before = {p.name: p.stat().st_ino for p in staging.glob("part-*.parquet")}
    assert sorted(done_before) == [f"part-{i:06d}.parquet" for i in range(parts // 2)]
    return done_before


def unblock(path: Path, drawing: Image.Image) -> None:
    """Replace the pipe at `path` with the drawing, keeping its mtime: as if it had been a plain
    file all along."""
    mtime = path.stat().st_mtime_ns
    path.unlink()
    drawing.save(path)
    os.utime(path, ns=(mtime, mtime))


def colour_of(hit) -> str:
    """The colour a library drawing's file is named after (`red_circle.png` -> red)."""
    return hit.key.rsplit("/", 1)[-1].split("_")[0]
