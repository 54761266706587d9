"""The plan a build writes before embedding: typed, read back exactly, refused when foreign;
and the model spec a collection records is one `load()` opens again."""

from __future__ import annotations

import json

import pytest
from collection_fakes import SETTINGS

from latentspace.collections import BuildSettings, CollectionError, build_collection, store
from latentspace.collections.plan import Plan, make_plan
from latentspace.collections.sources import open_source


def _fresh_plan(tmp_path, library, colour_model) -> Plan:
    manifest = store.Manifest(
        name="c",
        model="colour",
        identity=colour_model.identity,
        dtype="float32",
        settings=SETTINGS.vector_settings("float32").to_dict(),
    )
    source = open_source(library)
    return make_plan(tmp_path, manifest, source, 0, SETTINGS, "colour", colour_model.identity.to_dict(), "float32")


def test_a_plan_reads_back_as_it_was_written(tmp_path, library, colour_model):
    plan = _fresh_plan(tmp_path, library, colour_model)
    assert [len(u.items) for u in plan.units] == [5, 5, 5, 1]  # 16 readable at scan, 5 per part
    assert plan.counts.added == 16 and len(plan.skipped) == 1
    assert plan.units[0].part == "part-000000" and plan.next_ordinal == 4
    plan.save(tmp_path)
    again = Plan.pending(tmp_path)
    assert again == plan
    assert json.loads((tmp_path / store.PLAN).read_text()) == plan.to_dict()
    # a unit describes itself by its first and last keys, for messages
    assert plan.units[0].describe().startswith("5 file(s), ")


def test_a_plan_of_another_format_is_refused_naming_the_file(tmp_path):
    (tmp_path / store.PLAN).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(CollectionError, match="plan.json: not a build plan of format"):
        Plan.pending(tmp_path)


def test_resuming_takes_what_fixes_the_bytes_from_the_plan(tmp_path, library, colour_model):
    plan = _fresh_plan(tmp_path, library, colour_model)
    later = BuildSettings(batch_size=64, files_per_part=100, allow_urls=True, decode_threads=3)
    resumed = plan.settings_for(later)
    assert (resumed.batch_size, resumed.files_per_part, resumed.max_pixels) == (4, 5, 10_000)
    assert resumed.allow_urls and resumed.decode_threads == 3  # how to read stays the caller's


def test_a_model_opened_by_load_is_recorded_by_its_spec(tmp_path, served_dir, library):
    from latentspace.models.load import load

    model = load(str(served_dir))
    assert model.spec == str(served_dir)
    build_collection(tmp_path / "c", model, library, settings=SETTINGS)
    manifest = store.Manifest.load(tmp_path / "c")
    assert manifest.model == str(served_dir)  # not the display name, which load() cannot open
    # so a rerun without a model reopens it from the manifest
    again = build_collection(tmp_path / "c")
    assert again.unchanged == again.items == 12 and again.images_embedded == 0


def test_the_text_option_is_part_of_the_recorded_spec(served_dir, text_tower):
    from latentspace.models.load import _with_text

    assert _with_text("m", None) == "m"
    assert _with_text("m?text=old", "/x/y") == "m?text=/x/y"
    assert _with_text("m?a=1", "t t") == "m?a=1&text=t+t"


def test_a_collection_of_a_model_object_asks_for_the_model_again(tmp_path, library, colour_model):
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)  # not from load(): its name
    with pytest.raises(CollectionError, match="records its model as 'colour', which cannot be loaded.*--model"):
        build_collection(tmp_path / "c")
    assert build_collection(tmp_path / "c", colour_model).unchanged == 12  # given again, it goes on
