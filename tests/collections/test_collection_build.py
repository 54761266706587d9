"""Building a collection from a folder: what goes in, what is skipped and why, the part format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from collection_fakes import SETTINGS
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.collections import BuildSettings, Collection, build_collection


def test_folder_build_counts_and_skips(tmp_path, library, colour_model):
    report = build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    assert report.items == report.images_embedded == 12
    assert report.skipped == 5 and report.index == "exact"
    reasons = {
        json.loads(line)["key"]: json.loads(line)["reason"]
        for line in (tmp_path / "c" / "skipped.jsonl").read_text().splitlines()
    }
    assert set(reasons) == {"bad/corrupt.png", "bad/empty.jpg", "bad/notes.png", "bad/huge.png", "bad/gone.png"}
    assert "empty file" in reasons["bad/empty.jpg"]
    assert "not a decodable image" in reasons["bad/notes.png"] and "not a decodable image" in reasons["bad/corrupt.png"]
    assert "exceeds the limit of 10000" in reasons["bad/huge.png"]
    assert "unreadable" in reasons["bad/gone.png"]

    found = Collection.open(tmp_path / "c")
    keys = sorted(found.meta.column("key").to_pylist())
    assert "sub/red_triangle.png" in keys and "readme.txt" not in keys and len(keys) == 12
    # 17 candidate files in sorted order, 5 per part: 4 parts, part boundaries from the plan
    manifest = json.loads((tmp_path / "c" / "collection.json").read_text())
    assert [p["name"] for p in manifest["parts"]] == [f"part-{i:06d}" for i in range(4)]
    assert manifest["counts"] == {"items": 12, "parts": 4, "skipped": 5}
    assert not (tmp_path / "c" / "plan.json").exists() and not (tmp_path / "c" / "staging").exists()


def test_parts_are_plain_parquet_with_provenance(tmp_path, library, colour_model):
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    part = pq.read_table(tmp_path / "c" / "parts" / "part-000001.parquet")
    kind = part.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32() and kind.list_size == 4
    row = part.to_pylist()[0]
    path = Path(row["path"])
    assert path.is_file() and row["key"] == path.relative_to(library).as_posix()
    assert (row["width"], row["height"]) == (48, 48) and row["size"] == path.stat().st_size
    assert row["mtime_ns"] == path.stat().st_mtime_ns and len(row["sha256"]) == 64 and len(row["id"]) == 16
    assert np.isclose(np.linalg.norm(row["embedding"]), 1.0, atol=1e-6)
    info = json.loads(part.schema.metadata[b"latentspace"])
    assert info["model"] == "colour" and info["identity"] == colour_model.identity.to_dict()
    assert info["dtype"] == "float32" and info["settings"]["image_runtime"] == "auto"
    assert info["runtime"] == "torch-fp32"  # what made the vectors: the colour model exports no module
    manifest = json.loads((tmp_path / "c" / "collection.json").read_text())
    assert manifest["identity"] == colour_model.identity.to_dict() and manifest["dim"] == 4


def test_float16_parts(tmp_path, library, colour_model):
    build_collection(tmp_path / "f32", colour_model, library, settings=SETTINGS)
    build_collection(
        tmp_path / "f16",
        colour_model,
        library,
        settings=BuildSettings(max_pixels=10_000, files_per_part=5, batch_size=4, dtype="float16"),
    )
    part = pq.read_table(tmp_path / "f16" / "parts" / "part-000000.parquet")
    kind = part.schema.field("embedding").type
    assert kind.value_type == pa.float16() and kind.list_size == 4
    a, b = Collection.open(tmp_path / "f32"), Collection.open(tmp_path / "f16")
    ids = a.meta.column("id").to_pylist()
    assert np.abs(np.stack([a.vector(i) for i in ids]) - np.stack([b.vector(i) for i in ids])).max() < 1e-3
    assert [h.id for h in b.search_text(colour_model, "blue", k=3)] == [
        h.id for h in a.search_text(colour_model, "blue", k=3)
    ]
    with pytest.raises(ValueError, match="stores float16 vectors"):
        build_collection(tmp_path / "f16", colour_model, library, settings=BuildSettings(dtype="float32"))


def test_cli_build_and_search_json(tmp_path, text_tower):
    """The command as users run it, with a real model directory."""
    import fakes

    model_dir = fakes.save_tiny_model_dir(tmp_path / "model", text_tower)
    images = tmp_path / "images"
    for i, concept in enumerate(fakes.CONCEPTS[:6]):
        images.mkdir(exist_ok=True)
        fakes.draw(concept).save(images / f"{i:02d}.png")
    out = tmp_path / "coll"
    result = CliRunner().invoke(
        app,
        [
            "collection",
            "build",
            "pics",
            "--model",
            str(model_dir),
            "--images",
            str(images),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["items"] == 6 and report["images_embedded"] == 6
    assert "embedded 6/6 images" in result.stderr  # plain progress lines off a terminal

    result = CliRunner().invoke(app, ["collection", "search", str(out), "a red circle", "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 3
    assert all(
        set(line) == {"id", "score", "relevance", "match", "matches", "path", "url", "caption"} for line in lines
    )
    assert [line["score"] for line in lines] == sorted((line["score"] for line in lines), reverse=True)
    assert all(Path(line["path"]).parent == images for line in lines)

    like = CliRunner().invoke(app, ["collection", "search", str(out), "--like", lines[0]["id"], "--json"])
    assert like.exit_code == 0 and lines[0]["id"] not in like.stdout and len(like.stdout.splitlines()) == 5
    by_image = CliRunner().invoke(
        app, ["collection", "search", str(out), "--image", lines[0]["path"], "--json", "-k", "1"]
    )
    assert json.loads(by_image.stdout)["id"] == lines[0]["id"]
    info = CliRunner().invoke(app, ["collection", "info", str(out), "--json"])
    assert json.loads(info.stdout)["items"] == 6
    nothing = CliRunner().invoke(app, ["collection", "search", str(out)])
    assert nothing.exit_code == 2 and "give a query" in nothing.stderr

    # several terms: the same search as Collection.search_terms with their weights
    from latentspace.collections import Collection, Term
    from latentspace.models.load import load

    terms = ["a red circle", "--minus", "0.5*blue", "--like", lines[1]["id"], "--unlike", lines[2]["path"]]
    combined = CliRunner().invoke(app, ["collection", "search", str(out), *terms, "--json", "-k", "6"])
    assert combined.exit_code == 0, combined.output
    expected = Collection.open(out).search_terms(
        load(str(model_dir)),
        [
            Term("text", "a red circle"),
            Term("text", "blue", -0.5),
            Term("like", lines[1]["id"]),
            Term("like", lines[2]["path"], -1.0),
        ],
        k=6,
    )
    got = [json.loads(line)["id"] for line in combined.stdout.splitlines()]
    assert got == [h.id for h in expected] and len(got) == 4  # the two items named are left out
    away = CliRunner().invoke(app, ["collection", "search", str(out), "--minus", "red"])
    assert away.exit_code == 2 and "nothing to search toward" in away.stderr
    missing = CliRunner().invoke(app, ["collection", "search", str(tmp_path / "nope"), "red"])
    assert missing.exit_code == 2 and "no collection at" in missing.stderr


def test_one_build_at_a_time(tmp_path, library, colour_model):
    from latentspace.collections import CollectionBusy
    from latentspace.collections.store import build_lock

    with build_lock(tmp_path / "c"), pytest.raises(CollectionBusy, match="another build is running"):
        build_collection(tmp_path / "c", colour_model, library)
    assert build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS).items == 12


def test_openvino_image_runtime(tmp_path):
    """The forward runs on the runtime asked for: OpenVINO fp32 gives PyTorch's vectors, and every
    part records the runtime that made its vectors."""
    pytest.importorskip("openvino")
    import fakes

    model = str(fakes.make_hf_clip(tmp_path / "clip", seed=0))
    images = tmp_path / "images"
    images.mkdir()
    for i, concept in enumerate(fakes.CONCEPTS[:5]):
        fakes.draw(concept).save(images / f"{i}.png")
    build_collection(
        tmp_path / "torch", model, images, settings=BuildSettings(image_runtime="torch", image_precision="fp32")
    )
    openvino = BuildSettings(image_runtime="openvino", image_precision="fp32")
    report = build_collection(tmp_path / "ov", model, images, settings=openvino)
    assert report.items == 5
    info = json.loads(pq.read_schema(tmp_path / "ov" / "parts" / "part-000000.parquet").metadata[b"latentspace"])
    assert info["settings"]["image_runtime"] == "openvino" and info["runtime"] == "openvino-fp32"
    a, b = Collection.open(tmp_path / "torch"), Collection.open(tmp_path / "ov")
    for item in a.meta.column("id").to_pylist():
        assert float(a.vector(item) @ b.vector(item)) > 0.9999


def test_a_runtime_that_fails_falls_back_to_pytorch_and_the_parts_say_so(tmp_path, monkeypatch):
    """As the server does: a runtime that cannot build, or fails on a batch, costs speed, not the
    build; the vectors are PyTorch's and every part records the runtime that made them."""
    import fakes

    model = fakes.colour_embedder()
    images = tmp_path / "images"
    images.mkdir()
    for i, concept in enumerate(fakes.CONCEPTS[:6]):
        fakes.draw(concept).save(images / f"{i}.png")
    exact = BuildSettings(image_runtime="torch", image_precision="fp32", files_per_part=3, batch_size=2)
    build_collection(tmp_path / "exact", model, images, settings=exact)

    def fails_on_first_batch(module, example, runtime, precision):
        def run(*inputs):
            raise RuntimeError("a graph that baked in one input shape (simulated)")

        return run

    monkeypatch.setattr("latentspace.runtime.forwards.build_forward", fails_on_first_batch)
    asked = BuildSettings(image_runtime="onnxruntime", image_precision="fp32", files_per_part=3, batch_size=2)
    report = build_collection(tmp_path / "fell", model, images, settings=asked)
    assert report.items == 6 and report.skipped == 0
    for part in sorted((tmp_path / "fell" / "parts").glob("*.parquet")):
        info = json.loads(pq.read_schema(part).metadata[b"latentspace"])
        assert info["runtime"] == "torch-fp32" and info["settings"]["image_runtime"] == "onnxruntime"
    a, b = Collection.open(tmp_path / "exact"), Collection.open(tmp_path / "fell")
    for item in a.meta.column("id").to_pylist():
        np.testing.assert_array_equal(a.vector(item), b.vector(item))


def test_without_a_batch_size_the_plan_takes_the_runtimes_measured_one(tmp_path, library, colour_model):
    report = build_collection(tmp_path / "c", colour_model, library, settings=BuildSettings(max_pixels=10_000))
    assert report.items == 12
    info = json.loads(pq.read_schema(tmp_path / "c" / "parts" / "part-000000.parquet").metadata[b"latentspace"])
    assert info["unit"]["batch_size"] == colour_model.image_batch_size  # no measurement: the model's own
    from latentspace.runtime import CANDIDATES

    import fakes

    exportable = fakes.colour_embedder()  # a forward that is one module: auto measures it
    build_collection(tmp_path / "m", exportable, library, settings=BuildSettings(max_pixels=10_000))
    info = json.loads(pq.read_schema(tmp_path / "m" / "parts" / "part-000000.parquet").metadata[b"latentspace"])
    assert info["unit"]["batch_size"] in (4, 8, 16, 32)
    assert info["runtime"] in {f"{r}-{p}" for r, p in CANDIDATES}
