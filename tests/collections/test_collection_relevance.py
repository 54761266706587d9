"""Calibrated relevance: the calibration a build leaves, relevance on hits, min_relevance and
`matches` (Python, the CLI's --json), on the colour model: a text names a colour, and the bank's
generic texts name none (but three name red), so "red" finds the red drawings well above the
bank's best matches while a colourless text looks just like the bank's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from collection_fakes import SETTINGS, colour_of, save_drawing
from typer.testing import CliRunner

from latentspace.collections import Collection, CollectionError, build_collection, relevance


def test_share_beaten_is_increasing_and_in_0_1():
    null = np.sort(np.random.default_rng(0).normal(0.3, 0.05, 200))
    values = np.linspace(-1.0, 1.0, 2001)
    shares = relevance.share_beaten(values, null)
    assert np.all((shares >= 0) & (shares <= 1)) and np.all(np.diff(shares) > 0)  # strictly: no ties made
    assert relevance.share_beaten(np.array([null[100]]), null)[0] == pytest.approx(100.5 / 200, abs=1e-3)
    tied = relevance.share_beaten(values, np.full(50, 0.2))  # a null of one value still orders scores
    assert np.all(np.diff(tied) >= 0) and tied[0] < 0.01 and tied[-1] > 0.99
    assert relevance.share_beaten(np.array([0.2, 0.2 + 1e-8]), np.full(50, 0.2)) == pytest.approx([0.5, 0.5], abs=1e-4)


def test_relevance_is_monotonic_in_score_for_a_fixed_query(built, colour_model):
    for text in ("red", "a blue thing", "something", "yellow and green"):
        hits = built.search_text(colour_model, text, k=len(built), min_relevance=0)
        assert len(hits) == len(built) and hits.matches == len(built)
        scores = [h.score for h in hits]
        values = [h.relevance for h in hits]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert scores == sorted(scores, reverse=True)
        for (s1, r1), (s2, r2) in zip(zip(scores, values), zip(scores[1:], values[1:])):
            assert r1 >= r2 and (r1 > r2 or s1 == s2), (text, s1, r1, s2, r2)
    # the same scores give the same relevance whatever the query's rank among others
    hit = built.search_text(colour_model, "red", k=1)[0]
    assert built.calibration.relevance(np.array([hit.score]))[0] == pytest.approx(hit.relevance)


def test_the_default_bar_keeps_matches_and_says_when_there_are_none(built, colour_model):
    red = built.search_text(colour_model, "a red thing", k=10)
    assert red.matches == len(red) == 3 and {colour_of(h) for h in red} == {"red"}
    assert all(h.match and h.relevance >= relevance.DEFAULT_MIN_RELEVANCE for h in red)
    # every result, with the bar at 0: the red ones first, the rest after them, less relevant
    everything = built.search_text(colour_model, "a red thing", k=10, min_relevance=0)
    assert len(everything) == 10 and [h.id for h in everything[:3]] == [h.id for h in red]
    assert max(h.relevance for h in everything[3:]) < relevance.DEFAULT_MIN_RELEVANCE

    # a text with no colour in it looks just like the bank's texts: nothing passes, and the
    # nearest items come back all the same, marked as below the bar
    nothing = built.search_text(colour_model, "an x-ray of a broken femur", k=5)
    assert nothing.matches == 0 and len(nothing) == 5 and not any(h.match for h in nothing)
    assert all(h.relevance < relevance.DEFAULT_MIN_RELEVANCE for h in nothing)
    # a lower bar lets them through
    low = built.search_text(colour_model, "an x-ray of a broken femur", k=5, min_relevance=0.01)
    assert low.matches == 5 and all(h.match for h in low)
    with pytest.raises(ValueError, match="between 0 and 1"):
        built.search_text(colour_model, "red", min_relevance=1.5)


def test_image_item_and_weighted_queries_carry_relevance_but_are_not_cut_by_default(built, colour_model, tmp_path):
    query = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (128, 128, 128)).save(query)  # no colour: every score is low
    by_image = built.search_image(colour_model, query, k=5)
    assert len(by_image) == 5 and by_image.matches == 5 and all(h.relevance is not None for h in by_image)
    cut = built.search_image(colour_model, query, k=5, min_relevance=relevance.DEFAULT_MIN_RELEVANCE)
    assert cut.matches == 0 and len(cut) == 5  # asked for: the bar applies
    some = built.search_text(colour_model, "red", k=1)[0].id
    assert built.search_like(some, k=4).matches == 4


def test_python_search_reports_relevance_and_matches(built, colour_model, monkeypatch):
    from latentspace import collection, embed

    monkeypatch.setattr(embed, "load", lambda spec: colour_model)
    monkeypatch.setattr(collection, "_opened", {})
    red = collection.search(built.directory, text="red", k=10)
    assert red.matches == len(red) == 3 and all(r["match"] and r["relevance"] >= 0.9 for r in red)
    assert set(red[0]) == {"id", "score", "relevance", "match", "path", "url", "caption", "width", "height"}
    none = collection.search(built.directory, text="a plain sentence", k=4)
    assert none.matches == 0 and len(none) == 4 and not any(r["match"] for r in none)
    assert collection.search(built.directory, text="a plain sentence", k=4, min_relevance=0).matches == 4


def test_cli_json_has_relevance_match_and_matches(built, colour_model, monkeypatch):
    from latentspace.cli import app
    from latentspace.models import load as load_module

    monkeypatch.setattr(load_module, "load", lambda spec: colour_model)
    runner = CliRunner()
    result = runner.invoke(app, ["collection", "search", str(built.directory), "red", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and all(line["match"] and line["matches"] == 3 and line["relevance"] > 0.9 for line in lines)

    result = runner.invoke(app, ["collection", "search", str(built.directory), "plain words", "-k", "4", "--json"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4 and all(line["matches"] == 0 and line["match"] is False for line in lines)

    monkeypatch.setenv("LATENTSPACE_SEARCH_MIN_RELEVANCE", "0")  # the settings machinery reads it
    result = runner.invoke(app, ["collection", "search", str(built.directory), "plain words", "-k", "4", "--json"])
    assert [json.loads(line)["matches"] for line in result.stdout.splitlines()] == [4] * 4

    result = runner.invoke(app, ["collection", "search", str(built.directory), "plain words", "--min-relevance", "0.9"])
    assert result.exit_code == 0 and "nothing here looks like that" in result.stderr + result.stdout
    bad = runner.invoke(app, ["collection", "search", str(built.directory), "red", "--min-relevance", "2"])
    assert bad.exit_code != 0


def test_a_build_calibrates_and_an_incremental_build_updates_it(tmp_path, library, colour_model):
    directory = tmp_path / "c"
    first = build_collection(directory, colour_model, library, settings=SETTINGS)
    assert first.relevance == "calibrated over 12 rows"
    before = Collection.open(directory).calibration
    assert before is not None and before.rows == 12 and len(before.null) == len(relevance.bank_texts())

    again = build_collection(directory, colour_model, library, settings=SETTINGS)
    assert again.relevance == "up to date" and Collection.open(directory).calibration.to_dict() == before.to_dict()

    # new items (grey ones: closer to the bank's colourless texts than any drawing) and one gone
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (100 + i, 100 + i, 100 + i)).save(library / f"grey_{i}.png")
    (library / "red_circle.png").unlink()
    third = build_collection(directory, colour_model, library, settings=SETTINGS)
    assert third.relevance == "calibrated over 14 rows"
    after = Collection.open(directory).calibration
    assert after.rows == 14 and after.over != before.over and not np.allclose(after.null, before.null)
    # the same as a collection built from scratch from the same files
    fresh = tmp_path / "fresh"
    build_collection(fresh, colour_model, library, settings=SETTINGS)
    assert np.allclose(Collection.open(fresh).calibration.null, after.null, atol=1e-6)


def test_without_a_calibration_hits_have_no_relevance_and_a_bar_is_refused(built, colour_model):
    manifest = built.manifest
    manifest.relevance = None  # a collection built before relevance existed
    manifest.save(built.directory)
    old = Collection.open(built.directory)
    hits = old.search_text(colour_model, "plain words", k=4)
    assert len(hits) == 4 and hits.matches == 4 and all(h.relevance is None and h.match for h in hits)
    with pytest.raises(CollectionError, match="no relevance calibration.*run its build again"):
        old.search_text(colour_model, "red", min_relevance=0.5)
    # the next build calibrates it (nothing is embedded again)
    report = build_collection(built.directory, colour_model)
    assert report.images_embedded == 0 and report.relevance == "calibrated over 12 rows"
    assert Collection.open(built.directory).search_text(colour_model, "plain words", k=4).matches == 0


def test_a_model_without_text_leaves_no_calibration(tmp_path, colour_model):
    class ImagesOnly(type(colour_model)):
        modalities = ("image",)

    folder = tmp_path / "images"
    for concept in ("red circle", "blue square"):
        save_drawing(folder / f"{concept.replace(' ', '_')}.png", concept)
    report = build_collection(tmp_path / "c", ImagesOnly(), folder)
    assert report.relevance == "none (the model embeds no text)"
    assert Collection.open(tmp_path / "c").calibration is None
