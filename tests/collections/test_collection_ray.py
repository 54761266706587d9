"""`--engine ray`: the same plan and units as the local engine, run on a Ray actor pool.

One local Ray instance (2 CPUs, no dashboard) serves the whole module; the builds here use it
as a caller that is already connected would, and the CLI run in a subprocess connects to it
with --ray-address. Its workers get tests/ on their path, so the test models (ColourModel and
the failing one below) unpickle in the actors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from collection_fakes import SETTINGS, ColourModel, kill_halfway, unblock

from latentspace import process_state
from latentspace.collections import BuildSettings, build_collection
from latentspace.collections.ray_engine import PoolShape, UnitFailed, pool_shape  # imports no Ray
from latentspace.progress import PlainProgress

import fakes

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for the module; yields its address (for a second driver)."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # ray.init changes this process (a SIGTERM handler, a signal stack, environment variables)
    # and ray.shutdown does not undo it: as_found does, as the Ray engine does for its own.
    with process_state.as_found():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTHONPATH", path)  # the raylet and its workers inherit it
            ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=200 * 1024 * 1024,
                logging_level="WARNING",
            )
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def parts(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "parts").glob("*.parquet"))}


def manifest(directory: Path) -> dict:
    out = json.loads((directory / "collection.json").read_text())
    out.pop("updated")
    return out


class FailingColour(ColourModel):
    """A ColourModel that fails at its `fail_at`-th forward in the process it runs in: raises,
    or (crash=True) ends the process at once, as a segfault or the OOM killer would."""

    def __init__(self, fail_at: int, crash: bool = False) -> None:
        super().__init__()
        self.fail_at, self.crash, self.calls = fail_at, crash, 0

    def image_rows(self, pixels):
        self.calls += 1
        if self.calls == self.fail_at:
            if self.crash:
                os._exit(3)
            raise RuntimeError("the forward failed")
        return super().image_rows(pixels)


def test_ray_build_is_identical_to_local(tmp_path, library, colour_model, ray_cluster):
    local = build_collection(tmp_path / "local", colour_model, library, name="c", settings=SETTINGS)
    lines: list[str] = []
    shown: list[str] = []
    remote = build_collection(
        tmp_path / "ray",
        colour_model,
        library,
        name="c",
        settings=SETTINGS,
        engine="ray",
        ray_actors=2,
        log=lines.append,
        progress=PlainProgress(shown.append, interval=0),
    )
    assert any("2 Ray actor(s) loading 'colour'" in line for line in lines)
    assert re.fullmatch(
        r"\[[\d:]+\] embedded (\d+)/\1 images \([\d.]+ images/s, ETA 0:00:00\) - "
        r"part 4/4 on [12] Ray actor\(s\)",
        shown[-1],
    ), shown
    assert remote.parts_embedded == local.parts_embedded == 4 and remote.images_embedded == 12
    assert remote.skipped == local.skipped == 5 and remote.newly_skipped == local.newly_skipped
    assert parts(tmp_path / "ray") == parts(tmp_path / "local") and len(parts(tmp_path / "local")) == 4
    assert manifest(tmp_path / "ray") == manifest(tmp_path / "local")
    assert (tmp_path / "ray" / "skipped.jsonl").read_bytes() == (tmp_path / "local" / "skipped.jsonl").read_bytes()
    assert not (tmp_path / "ray" / "plan.json").exists() and not (tmp_path / "ray" / "staging").exists()
    assert sys.modules["ray"].is_initialized()  # the caller's connection is left as it was

    lines.clear()
    again = build_collection(tmp_path / "ray", colour_model, library, settings=SETTINGS, engine="ray", log=lines.append)
    assert again.parts_embedded == 0 and again.unchanged == 12
    assert not any("Ray" in line for line in lines)  # nothing to embed: no actor started


PARTS = 8  # the killed build: 16 images, 2 per part; the 9th image (part 4) is a named pipe


def test_killed_ray_build_resumes_on_either_engine(tmp_path, ray_cluster):
    model = fakes.make_hf_clip(tmp_path / "model", seed=0)
    images = tmp_path / "images"
    images.mkdir()
    drawings = {
        f"{i:03d}.png": fakes.draw(fakes.CONCEPTS[i % len(fakes.CONCEPTS)], size=40 + i, style=i % 2)
        for i in range(2 * PARTS)
    }
    blocking = f"{PARTS:03d}.png"
    for name, drawing in drawings.items():
        if name == blocking:
            os.mkfifo(images / name)
        else:
            drawing.save(images / name)
    settings = BuildSettings(files_per_part=2, batch_size=1)

    out = tmp_path / "interrupted"
    command = [
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
        "--engine",
        "ray",
        "--ray-address",
        ray_cluster,
        "--ray-actors",
        "1",
    ]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = kill_halfway(job, out, PARTS, timeout=300)  # Ray starts slowly on a loaded 2-core machine
    unblock(images / blocking, drawings[blocking])
    reference = build_collection(tmp_path / "reference", str(model), images, name="pics", settings=settings)
    assert reference.parts_embedded == PARTS

    shutil.copytree(out, tmp_path / "by-local")
    for directory, engine in ((out, "ray"), (tmp_path / "by-local", "local")):
        resumed = build_collection(
            directory, str(model), images, name="pics", settings=settings, engine=engine, ray_actors=1
        )
        assert resumed.resumed_plan and resumed.parts_resumed == PARTS // 2, engine
        assert resumed.parts_embedded == PARTS // 2 and resumed.items == 2 * PARTS, engine
        assert parts(directory) == parts(tmp_path / "reference"), engine
        assert manifest(directory) == manifest(tmp_path / "reference"), engine
    assert {name: (out / "parts" / name).stat().st_ino for name in done_before} == done_before  # moved, not redone


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_deleted_part_is_embedded_again_and_nothing_else(tmp_path, library, colour_model, engine, ray_cluster):
    directory = tmp_path / "c"
    build_collection(directory, colour_model, library, settings=SETTINGS, engine=engine)
    before = manifest(directory)
    gone = directory / "parts" / "part-000001.parquet"
    lost_keys = set(pq.read_table(gone, columns=["key"]).column("key").to_pylist())
    kept = {p.name: (p.stat().st_ino, p.read_bytes()) for p in (directory / "parts").glob("*.parquet") if p != gone}
    gone.unlink()

    lines: list[str] = []
    report = build_collection(directory, colour_model, library, settings=SETTINGS, engine=engine, log=lines.append)
    assert any("part-000001" in line and "missing" in line for line in lines)
    assert report.parts_embedded == 1 and report.images_embedded == len(lost_keys) and report.items == 12
    assert report.added == len(lost_keys) and report.unchanged == 12 - len(lost_keys) and report.removed == 0
    assert {
        p.name: (p.stat().st_ino, p.read_bytes())
        for p in (directory / "parts").glob("*.parquet")
        if p.name != "part-000004.parquet"
    } == kept  # the others untouched
    new = pq.read_table(directory / "parts" / "part-000004.parquet", columns=["key"]).column("key").to_pylist()
    assert set(new) == lost_keys
    after = manifest(directory)
    assert [p["name"] for p in after["parts"]] == ["part-000000", "part-000002", "part-000003", "part-000004"]
    assert after["counts"] == before["counts"]
    assert (directory / "skipped.jsonl").read_text().count("\n") == 5


def test_local_ray_local_chain_with_a_crashing_actor(tmp_path, library, colour_model, ray_cluster):
    """A local build fails in part 2; a Ray build resumes it and its actor dies in part 3 (the
    error names it); a local build finishes: the parts are those of an uninterrupted build."""
    # 17 files in key order, 3 a part: part 0 holds 3 bad files (no forward), part 1 two bad and a
    # good one (1 forward), parts 2-5 three good ones (2 forwards each, at batch size 2).
    settings = BuildSettings(max_pixels=10_000, files_per_part=3, batch_size=2)
    build_collection(tmp_path / "reference", colour_model, library, name="c", settings=settings)
    directory = tmp_path / "c"
    with pytest.raises(RuntimeError, match="the forward failed"):  # the 3rd forward: in part 2
        build_collection(directory, FailingColour(fail_at=3), library, settings=settings)
    staged = sorted(p.name for p in (directory / "staging").glob("*.parquet"))
    assert staged == ["part-000000.parquet", "part-000001.parquet"]

    with pytest.raises(UnitFailed) as failed:  # one actor, running parts 2, 3, ... in order: dies in part 3
        build_collection(
            directory, FailingColour(fail_at=3, crash=True), library, settings=settings, engine="ray", ray_actors=1
        )
    message = str(failed.value)
    assert message.startswith("unit part-000003 (3 file(s), ") and "the Ray actor embedding it died" in message
    assert "1 more unit(s) queued on it were not run" in message and "rerun the build to resume" in message
    staged = sorted(p.name for p in (directory / "staging").glob("*.parquet"))
    assert staged == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert (directory / "plan.json").exists() and not (directory / "collection.json").exists()

    report = build_collection(directory, colour_model, library, settings=settings)
    assert report.resumed_plan and report.parts_resumed == 3 and report.parts_embedded == 3
    assert parts(directory) == parts(tmp_path / "reference")
    assert manifest(directory) == manifest(tmp_path / "reference")


def test_missing_ray_says_how_to_install_it(tmp_path, library, colour_model, monkeypatch):
    from typer.testing import CliRunner

    from latentspace.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'latentspace\[ray\]'"):
        build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS, engine="ray")
    assert not (tmp_path / "c").exists()  # refused before the model loads or anything is written
    result = CliRunner().invoke(
        app,
        [
            "collection",
            "build",
            "c",
            "--model",
            "no-such-model",
            "--images",
            str(library),
            "--out",
            str(tmp_path / "cli"),
            "--engine",
            "ray",
        ],
    )
    assert result.exit_code == 2 and "pip install 'latentspace[ray]'" in result.output


def test_pool_shape():
    assert pool_shape(2, [2], 0) == PoolShape(1, 2, 0)  # one machine: one actor using all of it
    assert pool_shape(64, [16] * 4, 0) == PoolShape(4, 16, 0)  # one per node
    assert pool_shape(64, [0, 32, 32], 0, decode_threads=8) == PoolShape(8, 8, 0)
    assert pool_shape(8, [8], 0, actors=3) == PoolShape(3, 2, 0)
    assert pool_shape(4, [4], 0, actors=8) == PoolShape(8, 1, 0)
    assert pool_shape(4, [4], 0, actors=1, decode_threads=16) == PoolShape(1, 4, 0)  # never more than a node has
    assert pool_shape(32, [32], 4) == PoolShape(4, 8, 1)  # one actor per GPU
    assert pool_shape(32, [32], 4, actors=8) == PoolShape(4, 8, 1)
    assert pool_shape(32, [32], 4, actors=2) == PoolShape(2, 16, 1)


def test_ray_build_into_postgresql_has_the_rows_of_a_local_build(
    tmp_path, library, colour_model, ray_cluster, postgres_url
):
    """--engine ray with --store postgresql://...: the actors embed, the parts are pushed as from
    the local engine, and the database holds exactly the rows of a local embedded build."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from test_collection_postgres import embedded_rows, rows

    from latentspace.collections import postgres as pg

    url, name = postgres_url, f"ray-{tmp_path.name[-12:]}"
    report = pg.build_in_store(
        url, name, colour_model, library, out=tmp_path / "work", settings=SETTINGS, engine="ray", ray_actors=2
    )
    assert report.parts_embedded == 4 and report.images_embedded == 12 and "pgvector" in report.index
    build_collection(tmp_path / "local", colour_model, library, settings=SETTINGS)
    assert rows(url, name) == embedded_rows(tmp_path / "local") and len(rows(url, name)) == 12
