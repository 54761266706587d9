"""Re-running a build: only new and changed files are embedded, deleted ones leave."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
from collection_fakes import SETTINGS, save_drawing

from latentspace.collections import Collection, build_collection

import fakes


def part_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted((directory / "parts").glob("*.parquet"))}


def test_add_change_touch_delete(tmp_path, library, colour_model):
    out = tmp_path / "c"
    build_collection(out, colour_model, library, settings=SETTINGS)
    before = part_bytes(out)
    first = Collection.open(out)
    old_ids = {h.key: h.id for h in map(first.item, first.meta.column("id").to_pylist())}

    # nothing changed: nothing read, nothing written
    report = build_collection(out, colour_model, library, settings=SETTINGS)
    assert (report.added, report.changed, report.removed, report.unchanged) == (0, 0, 0, 12)
    assert report.images_embedded == 0 and report.newly_skipped == 0 and part_bytes(out) == before

    save_drawing(library / "new" / "blue_square_2.png", "blue square", style=1)  # added
    save_drawing(library / "red_circle.png", "green circle")  # changed content, same name
    os.utime(library / "yellow_square.png", ns=(1, 1))  # touched: mtime differs, bytes do not
    (library / "sub" / "red_triangle.png").unlink()  # deleted
    report = build_collection(out, colour_model, library, settings=SETTINGS)
    assert (report.added, report.changed, report.removed, report.refreshed) == (1, 1, 1, 1)
    assert report.images_embedded == 2 and report.parts_embedded == 1
    assert report.newly_skipped == 0 and report.skipped == 5  # bad files are not read again

    found = Collection.open(out)
    keys = set(found.meta.column("key").to_pylist())
    assert len(found) == 12 and "sub/red_triangle.png" not in keys and "new/blue_square_2.png" in keys
    assert found.item("red_circle.png").id == old_ids["red_circle.png"]  # ids are stable per file
    assert found.vector(old_ids["red_circle.png"])[:3].argmax() == 1  # re-embedded: now green
    assert "red_circle.png" not in [h.key for h in found.search_text(colour_model, "red", k=3)]
    assert found.item("yellow_square.png").mtime_ns == 1
    # the parts hold exactly the live rows: no tombstones for readers to apply
    rows = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("*.parquet"))
    assert rows == 12

    # a bad file that changes is tried again
    save_drawing(library / "bad" / "corrupt.png", "red square")
    report = build_collection(out, colour_model, library, settings=SETTINGS)
    assert report.added == 1 and report.images_embedded == 1 and report.skipped == 4


def test_everything_deleted_and_rerun_without_arguments(tmp_path, colour_model):
    images = tmp_path / "images"
    for concept in fakes.CONCEPTS[:3]:
        save_drawing(images / f"{concept}.png", concept)
    out = tmp_path / "c"
    build_collection(out, colour_model, images)
    for path in images.iterdir():
        path.unlink()
    report = build_collection(out, colour_model)  # the collection's one source, the given model
    assert report.removed == 3 and report.items == 0
    assert not list((out / "parts").glob("*.parquet"))
    assert Collection.open(out).search_text(colour_model, "red") == []


def test_second_source_is_added_not_replacing(tmp_path, colour_model):
    one, two = tmp_path / "one", tmp_path / "two"
    save_drawing(one / "a.png", "red circle")
    save_drawing(two / "a.png", "blue circle")
    out = tmp_path / "c"
    build_collection(out, colour_model, one)
    report = build_collection(out, colour_model, two)
    assert report.added == 1 and report.removed == 0 and report.items == 2
    found = Collection.open(out)
    assert len({h.id for h in map(found.item, found.meta.column("id").to_pylist())}) == 2
    assert [s["location"] for s in found.info()["sources"]] == [str(one), str(two)]
