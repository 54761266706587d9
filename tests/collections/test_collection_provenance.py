"""Provenance: what made a collection's vectors is recorded, round-trips, is reported by
`collection info`, fills in for a 0.4.0 collection, and guards searches (another space, another
query prefix)."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import latentspace
from latentspace.cli import app
from latentspace.collections import BuildSettings, Collection, CollectionSpaceError, Term, build_collection, store
from latentspace.collections.provenance import PartProvenance, Provenance

import fakes

SETTINGS = BuildSettings(
    max_pixels=10_000, files_per_part=5, batch_size=4, image_runtime="torch", image_precision="fp32"
)


def _drawings(folder, concepts):
    folder.mkdir(parents=True, exist_ok=True)
    for concept in concepts:
        fakes.draw(concept, size=40).save(folder / f"{concept.replace(' ', '_')}.png")
    return folder


def test_a_build_records_every_provenance_field(tmp_path, library, colour_model):
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    manifest = store.Manifest.load(tmp_path / "c")
    p = manifest.provenance
    assert p is not None
    assert (p.query_prefix, p.document_prefix) == ("", "")  # a model without prefixes
    assert p.latentspace == latentspace.__version__
    assert p.libraries["torch"] == __import__("torch").__version__ and "openvino" in p.libraries
    # the preprocessing, as the model gives it: its input shape and the shared transparency policy
    ((fingerprint, description),) = p.preprocessing.items()
    assert description["input_shape"] == [3, 16, 16]
    assert description["transparency"] == "alpha composited onto RGB 255,255,255"
    assert sorted(p.parts) == [part.name for part in manifest.parts]
    for part in manifest.parts:
        entry = p.parts[part.name]
        assert entry.runtimes == {"torch-fp32": part.rows} and entry.model == "colour"
        assert entry.preprocessing == fingerprint and entry.latentspace == latentspace.__version__
        # the part itself says the same (a part copied elsewhere still knows what made it)
        info = store.read_part_info(store.part_path(tmp_path / "c", part.name))
        assert PartProvenance.from_dict(info["provenance"]) == entry
    made_by = Collection.open(tmp_path / "c").info()["provenance"]["made_by"]
    assert [(g["runtime"], g["precision"], g["rows"], g["parts"]) for g in made_by] == [
        ("torch", "fp32", 12, len(manifest.parts))
    ]


def test_the_manifest_round_trips_every_provenance_field():
    provenance = Provenance(
        query_prefix="search_query: ",
        document_prefix="search_document: ",
        latentspace="0.5.0",
        libraries={"torch": "2.5.0", "openvino": "2025.1", "onnxruntime": None},
        preprocessing={"abc123abc123": {"resize": {"size": [224, 224]}, "mean": [0.5] * 3, "input_shape": [3, 8, 8]}},
        parts={
            "part-000000": PartProvenance(
                {"openvino-int8": 700, "torch-fp32": 324}, "m", "0.5.0", {"torch": "2.5.0"}, "abc123abc123"
            ),
            "part-000001": PartProvenance({"torch-fp32": 10}),
        },
    )
    manifest = store.Manifest(
        name="n",
        model="m",
        identity=fakes.colour_embedder().identity,
        dtype="float32",
        settings={},
        provenance=provenance,
    )
    again = store.Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.provenance == provenance
    assert again.to_dict() == manifest.to_dict()
    # a field that does not survive would show here: every one differs from its default
    defaults = Provenance(None, None, "unknown", {})
    assert all(getattr(provenance, f) != getattr(defaults, f) for f in vars(defaults))


def _as_0_4_0(directory) -> None:
    """Make a collection look as latentspace 0.4.0 left it: no provenance in the manifest, nor in
    the parts' metadata (their `runtime` was recorded already)."""
    data = store.read_json(directory / store.MANIFEST)
    del data["provenance"]
    store.write_json(directory / store.MANIFEST, data)
    for path in (directory / store.PARTS).glob("*.parquet"):
        table = pq.read_table(path)
        info = json.loads(table.schema.metadata[b"latentspace"])
        del info["provenance"]
        pq.write_table(table.replace_schema_metadata({b"latentspace": json.dumps(info).encode()}), path)


def test_an_old_manifest_opens_and_the_next_build_fills_it(tmp_path, colour_model):
    images = _drawings(tmp_path / "images", fakes.CONCEPTS[:6])
    out = tmp_path / "c"
    build_collection(out, colour_model, images, settings=SETTINGS)
    _as_0_4_0(out)

    old = Collection.open(out)
    assert old.info()["provenance"] is None and old.manifest.provenance is None
    assert len(old.search_text(colour_model, "red", k=3)) == 3  # searches as before
    shown = CliRunner().invoke(app, ["collection", "info", str(out)])
    assert shown.exit_code == 0 and "provenance: unknown" in shown.stdout
    as_json = json.loads(CliRunner().invoke(app, ["collection", "info", str(out), "--json"]).stdout)
    assert as_json["provenance"] is None

    _drawings(images, fakes.CONCEPTS[6:8])
    build_collection(out, colour_model, images, settings=SETTINGS)
    filled = Collection.open(out).info()["provenance"]
    groups = {(g["runtime"], g["latentspace"]): g["rows"] for g in filled["made_by"]}
    # the old parts name their runtime (from their metadata), without the versions; the new one all
    assert groups == {("torch", None): 6, ("torch", latentspace.__version__): 2}
    assert filled["query_prefix"] == "" and filled["latentspace"] == latentspace.__version__


def test_info_reports_rows_made_by_different_runtimes(tmp_path):
    """A collection grown by builds on two runtimes (e.g. another machine): both listed, with rows."""
    model = fakes.colour_embedder()
    images = _drawings(tmp_path / "images", fakes.CONCEPTS[:6])
    out = tmp_path / "c"
    build_collection(out, model, images, settings=SETTINGS)
    _drawings(images, fakes.CONCEPTS[6:10])
    build_collection(out, model, images, settings=SETTINGS.but(image_runtime="onnxruntime"))

    info = Collection.open(out).info()["provenance"]
    assert {(g["runtime"], g["precision"]): g["rows"] for g in info["made_by"]} == {
        ("torch", "fp32"): 6,
        ("onnxruntime", "fp32"): 4,
    }
    human = CliRunner().invoke(app, ["collection", "info", str(out)])
    assert human.exit_code == 0, human.output
    assert "made by: torch-fp32: 6 rows in 2 part(s)" in human.stdout
    assert "made by: onnxruntime-fp32: 4 rows in 1 part(s)" in human.stdout
    assert "query prefix: ''" in human.stdout and "transparency alpha composited onto RGB" in human.stdout
    as_json = json.loads(CliRunner().invoke(app, ["collection", "info", str(out), "--json"]).stdout)
    assert sorted(g["rows"] for g in as_json["provenance"]["made_by"]) == [4, 6]

    # rows that leave the collection leave its account too
    for concept in fakes.CONCEPTS[6:10]:
        (images / f"{concept.replace(' ', '_')}.png").unlink()
    build_collection(out, model, images, settings=SETTINGS)
    info = Collection.open(out).info()["provenance"]
    assert [(g["runtime"], g["precision"], g["rows"]) for g in info["made_by"]] == [("torch", "fp32", 6)]
    assert set(store.Manifest.load(out).provenance.parts) == {p.name for p in store.Manifest.load(out).parts}


def test_the_runtime_recorded_is_the_one_that_ran_not_the_one_asked_for(tmp_path):
    """torch int8 quantises Linear layers; the colour model has none, so the build falls back to
    PyTorch fp32, and that is what the collection records."""
    images = _drawings(tmp_path / "images", fakes.CONCEPTS[:3])
    build_collection(tmp_path / "c", fakes.colour_embedder(), images, settings=SETTINGS.but(image_precision="int8"))
    made_by = Collection.open(tmp_path / "c").info()["provenance"]["made_by"]
    assert [(g["runtime"], g["precision"], g["rows"]) for g in made_by] == [("torch", "fp32", 3)]
    assert store.Manifest.load(tmp_path / "c").settings["image_precision"] == "int8"  # what was asked


def test_made_by_shares_a_part_that_fell_back_mid_way():
    provenance = Provenance("", "", "0.5.0", {}, parts={"p": PartProvenance({"openvino-int8": 60, "torch-fp32": 40})})
    assert {(g["runtime"], g["rows"]) for g in provenance.made_by({"p": 100})} == {("openvino", 60), ("torch", 40)}
    # rows deleted since: shared out in proportion
    assert {(g["runtime"], g["rows"]) for g in provenance.made_by({"p": 50})} == {("openvino", 30), ("torch", 20)}


def test_a_model_of_another_space_is_refused_on_every_search_path(tmp_path, library, colour_model):
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    built = Collection.open(tmp_path / "c")
    other = fakes.colour_embedder(fingerprint="0123456789abcdef")
    query = tmp_path / "q.png"
    fakes.draw("red circle", size=40).save(query)
    for search in (
        lambda: built.search_text(other, "red"),
        lambda: built.search_image(other, query),
        lambda: built.search_terms(other, [Term("text", "red"), Term("image", query, -0.5)]),
    ):
        with pytest.raises(CollectionSpaceError) as refused:
            search()
        message = str(refused.value)
        # names both models and both spaces, and what to do
        assert "query model 'colour'" in message and "built with model 'colour'" in message
        assert "colour-space-4d@0123456789abcdef" in message and "colour-space-4d@c010c010c010c010" in message
        assert "use a model of the collection's space" in message


def test_the_cli_refuses_a_query_model_of_another_space(tmp_path, library, colour_model):
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    result = CliRunner().invoke(
        app, ["collection", "search", str(tmp_path / "c"), "red", "--model", "builtin:all-MiniLM-L6-v2"]
    )
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "'builtin:all-MiniLM-L6-v2' is in latent space all-MiniLM-L6-v2-384d@" in message
    assert "holds vectors of space colour-space-4d@c010c010c010c010 (built with model 'colour')" in message


def test_a_query_prefix_other_than_the_recorded_one_is_refused(tmp_path, library):
    from latentspace.models.embedder import Embedder

    class Prefixed(type(fakes.colour_embedder())):  # type: ignore[misc]
        def text_prefix(self, task_type):
            return "search_query: " if task_type == "search_query" else "search_document: "

    assert issubclass(Prefixed, Embedder)
    prefixed = Prefixed()
    build_collection(tmp_path / "c", prefixed, library, settings=SETTINGS)
    built = Collection.open(tmp_path / "c")
    assert built.manifest.provenance.query_prefix == "search_query: "
    assert built.manifest.provenance.document_prefix == "search_document: "
    assert len(built.search_text(prefixed, "red", k=2)) == 2

    plain = fakes.colour_embedder()  # same space, no prefix
    with pytest.raises(CollectionSpaceError, match="puts '' before a search query.*records 'search_query: '"):
        built.search_text(plain, "red")
    with pytest.raises(CollectionSpaceError, match="query prefix"):
        built.search_terms(plain, [Term("text", "red")])
    assert len(built.search_image(plain, library / "red_circle.png", k=2)) == 2  # images carry no prefix
    # a collection that records no prefix (0.4.0) is not checked
    built.manifest = replace(built.manifest, provenance=None)
    assert len(built.search_text(plain, "red", k=2)) == 2


def test_the_postgresql_store_carries_provenance(tmp_path, library, colour_model, postgres_url):
    """The database keeps the manifest as JSON: provenance round-trips through it (open, info,
    export), and a 0.4.0 manifest there opens with provenance unknown."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    import uuid

    from latentspace.collections import open_collection
    from latentspace.collections import postgres as pg

    name = f"prov-{uuid.uuid4().hex[:10]}"
    pg.build_in_store(postgres_url, name, colour_model, library, out=tmp_path / "work", settings=SETTINGS)
    local = store.Manifest.load(tmp_path / "work").provenance
    assert local is not None and local.parts
    found = open_collection(name, postgres_url)
    try:
        assert found.manifest.provenance == local
        assert found.info()["provenance"] == Collection.open(tmp_path / "work").info()["provenance"]
    finally:
        found.close()
    assert pg.export(postgres_url, name, tmp_path / "exported").provenance == local
    assert store.Manifest.load(tmp_path / "exported").provenance == local

    conn = pg.connect(postgres_url)  # as 0.4.0 wrote it: no provenance key
    with conn.transaction():
        conn.execute(f"UPDATE {pg.COLLECTIONS_TABLE} SET manifest = manifest - 'provenance' WHERE name = %s", (name,))
    conn.close()
    old = open_collection(name, postgres_url)
    try:
        assert old.manifest.provenance is None and old.info()["provenance"] is None
        assert len(old.search_text(colour_model, "red", k=2)) == 2
    finally:
        old.close()


def test_a_runtime_that_fails_mid_part_is_recorded_with_the_rows_each_made(tmp_path, monkeypatch):
    """ONNX Runtime makes the first batch, then fails; PyTorch fp32 makes the rest of the part
    (runtime/forwards.guarded). The part and the manifest name both, with their rows."""
    from latentspace.collections import unit
    from latentspace.runtime.forwards import guarded

    real_on_runtimes = unit.on_runtimes

    def flaky_after_one_batch(model, **asked):
        placed = real_on_runtimes(model, **asked)
        fast, calls = placed._image, []

        def flaky(pixels):
            calls.append(len(pixels))
            if len(calls) > 1:
                raise RuntimeError("the runtime gave up")
            return fast(pixels)

        placed._image = guarded(flaky, placed.model.image_rows, placed.choices["image"], "test")
        return placed

    monkeypatch.setattr(unit, "on_runtimes", flaky_after_one_batch)
    images = _drawings(tmp_path / "images", fakes.CONCEPTS[:10])
    settings = SETTINGS.but(image_runtime="onnxruntime", files_per_part=10, batch_size=4)
    build_collection(tmp_path / "c", fakes.colour_embedder(), images, settings=settings)

    manifest = store.Manifest.load(tmp_path / "c")
    (part,) = manifest.parts
    assert manifest.provenance.parts[part.name].runtimes == {"onnxruntime-fp32": 4, "torch-fp32": 6}
    made_by = Collection.open(tmp_path / "c").info()["provenance"]["made_by"]
    assert {(g["runtime"], g["precision"], g["rows"]) for g in made_by} == {
        ("onnxruntime", "fp32", 4),
        ("torch", "fp32", 6),
    }
