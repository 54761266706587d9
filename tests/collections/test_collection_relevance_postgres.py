"""Relevance in the PostgreSQL store: the calibration travels with the manifest, so a collection
in PostgreSQL answers with the relevance, matches and bar of the same collection embedded, and an
incremental build there updates it."""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from PIL import Image  # noqa: E402

from latentspace.collections import BuildSettings, Collection, build_collection, open_collection  # noqa: E402
from latentspace.collections import postgres as pg  # noqa: E402

SETTINGS = BuildSettings(max_pixels=10_000, files_per_part=3, batch_size=4)


def test_relevance_and_matches_as_in_the_embedded_store(tmp_path, library, colour_model, postgres_url):
    name = f"t-{uuid.uuid4().hex[:12]}"
    pg.build_in_store(postgres_url, name, colour_model, library, out=tmp_path / "work", settings=SETTINGS)
    build_collection(tmp_path / "embedded", colour_model, library, settings=SETTINGS)
    embedded, in_pg = Collection.open(tmp_path / "embedded"), open_collection(name, postgres_url)
    try:
        assert in_pg.calibration is not None and in_pg.calibration.to_dict() == embedded.calibration.to_dict()
        for text, k in (("a red thing", 10), ("an x-ray of a broken femur", 4)):
            mine, theirs = in_pg.search_text(colour_model, text, k=k), embedded.search_text(colour_model, text, k=k)
            assert mine.matches == theirs.matches and [h.id for h in mine] == [h.id for h in theirs]
            assert [h.match for h in mine] == [h.match for h in theirs]
            assert [h.relevance for h in mine] == pytest.approx([h.relevance for h in theirs], abs=1e-5)
        assert in_pg.search_text(colour_model, "a red thing", k=10).matches == 3
        assert in_pg.search_text(colour_model, "an x-ray of a broken femur", k=4).matches == 0
    finally:
        in_pg.close()

    # an incremental build in PostgreSQL recalibrates: the database's manifest holds the new one
    before = embedded.calibration
    for i in range(3):
        Image.new("RGB", (16, 16), (90 + i, 90 + i, 90 + i)).save(library / f"grey_{i}.png")
    report = pg.build_in_store(postgres_url, name, colour_model, library, out=tmp_path / "work", settings=SETTINGS)
    assert report.relevance == "calibrated over 15 rows"
    again = open_collection(name, postgres_url)
    try:
        assert again.calibration.rows == 15 and again.calibration.over != before.over
    finally:
        again.close()
