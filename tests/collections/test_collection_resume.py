"""kill -9 in the middle of a build, then the same command again: only the missing parts are
embedded, and the collection is byte-identical to one built without interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fakes

PARTS = 20


def build_command(model: Path, images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "latentspace", "collection", "build", "pics", "--model", str(model),
            "--images", str(images), "--out", str(out), "--files-per-part", "2", "--batch-size", "1", "--json"]


def run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kill_9_then_resume_is_byte_identical(tmp_path):
    model = fakes.make_hf_clip(tmp_path / "model", seed=0)  # tiny, and quick to load in a subprocess
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2 * PARTS):
        fakes.draw(fakes.CONCEPTS[i % len(fakes.CONCEPTS)], size=40 + i, style=i % 2).save(images / f"{i:03d}.png")

    reference = run(build_command(model, images, tmp_path / "reference"))
    assert reference["parts_embedded"] == PARTS

    out = tmp_path / "interrupted"
    staging = out / "staging"
    job = subprocess.Popen(build_command(model, images, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(list(staging.glob("part-*.parquet"))) < PARTS // 2:
            assert job.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.002)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        job.wait(30)
    assert job.returncode == -signal.SIGKILL
    assert (out / "plan.json").exists() and not (out / "collection.json").exists()
    done_before = {p.name: p.stat().st_ino for p in staging.glob("part-*.parquet")}
    assert PARTS // 2 <= len(done_before) < PARTS

    resumed = run(build_command(model, images, out))
    assert resumed["resumed_plan"] and resumed["parts_resumed"] == len(done_before)
    assert resumed["parts_embedded"] == PARTS - len(done_before)  # nothing finished is redone
    assert resumed["items"] == 2 * PARTS and resumed["added"] == 2 * PARTS and resumed["unchanged"] == 0
    assert {name: (out / "parts" / name).stat().st_ino for name in done_before} == done_before  # moved, not rewritten
    assert not (out / "plan.json").exists() and not staging.exists()

    def parts(directory: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((directory / "parts").glob("*.parquet"))}

    assert parts(out) == parts(tmp_path / "reference")
    assert len(parts(out)) == PARTS
