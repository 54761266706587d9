"""kill -9 in the middle of a build, then the same command again: only the missing parts are
embedded, and the collection is byte-identical to one built without interruption.

The build is stopped at a known point without timing races: the 21st of 40 images is a named
pipe, so reading it blocks (in part 10 of 20) until the build is killed; then the pipe is
replaced by the real image, with the same mtime, before the build is run again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from collection_fakes import kill_halfway, unblock

import fakes

PARTS = 20
BLOCKING = 2 * PARTS // 2  # the image that blocks: the first of part 10


def build_command(model: Path, images: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "latentspace",
        "collection",
        "build",
        "pics",
        "--model",
        str(model),
        "--images",
        str(images),
        "--out",
        str(out),
        "--files-per-part",
        "2",
        "--batch-size",
        "1",
        "--json",
    ]


def run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def parts(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "parts").glob("*.parquet"))}


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    model = fakes.make_hf_clip(tmp_path / "model", seed=0)  # tiny, and quick to load in a subprocess
    images = tmp_path / "images"
    images.mkdir()
    drawings = {
        f"{i:03d}.png": fakes.draw(fakes.CONCEPTS[i % len(fakes.CONCEPTS)], size=40 + i, style=i % 2)
        for i in range(2 * PARTS)
    }
    blocking = f"{BLOCKING:03d}.png"
    for name, drawing in drawings.items():
        if name == blocking:
            os.mkfifo(images / name)
        else:
            drawing.save(images / name)

    out = tmp_path / "interrupted"
    staging = out / "staging"
    job = subprocess.Popen(build_command(model, images, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = kill_halfway(job, out, PARTS, timeout=240)
    unblock(images / blocking, drawings[blocking])
    reference = run(build_command(model, images, tmp_path / "reference"))
    assert reference["parts_embedded"] == PARTS and reference["items"] == 2 * PARTS

    resumed = run(build_command(model, images, out))
    assert resumed["resumed_plan"] and resumed["parts_resumed"] == PARTS // 2
    assert resumed["parts_embedded"] == PARTS // 2  # only the in-flight part and those after it
    assert resumed["items"] == 2 * PARTS and resumed["added"] == 2 * PARTS and resumed["unchanged"] == 0
    assert {name: (out / "parts" / name).stat().st_ino for name in done_before} == done_before  # moved, not redone
    assert not (out / "plan.json").exists() and not staging.exists()
    assert parts(out) == parts(tmp_path / "reference") and len(parts(out)) == PARTS
