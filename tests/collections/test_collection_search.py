"""Searching a collection: rankings by text, image and item, filters, scores, spaces, HNSW."""

from __future__ import annotations

import numpy as np
import pytest
from collection_fakes import colour_of

from latentspace.collections import (
    BuildSettings,
    Collection,
    CollectionSpaceError,
    Filters,
    ItemNotFound,
    QueryError,
    Term,
    build_collection,
)
from latentspace.collections.index import HnswIndex

import fakes


@pytest.mark.parametrize("colour", ["red", "green", "blue", "yellow"])
def test_text_search_ranks_the_named_colour_first(built, colour_model, colour):
    hits = built.search_text(colour_model, f"a {colour} thing", k=3)
    assert [colour_of(h) for h in hits] == [colour] * 3
    assert colour_model.last_task_type == "search_query"
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_image_and_like_search(built, colour_model, tmp_path):
    query = tmp_path / "query.png"
    fakes.draw("green triangle", size=40, style=1).save(query)
    hits = built.search_image(colour_model, query, k=3)
    assert [colour_of(h) for h in hits] == ["green"] * 3
    assert [h.id for h in built.search_image(colour_model, query.read_bytes(), k=3)] == [h.id for h in hits]

    target = built.item("sub/blue_triangle.png")  # a path in the source folder names an item too
    like = built.search_like(target.id, k=2)
    assert target.id not in [h.id for h in like] and [colour_of(h) for h in like] == ["blue", "blue"]
    assert built.search_like(target.path, k=2) == like
    with pytest.raises(ItemNotFound, match="no item 'nope'"):
        built.search_like("nope")


def test_filters_and_min_score(built, colour_model):
    # min_relevance=0: every result, however weak (this test is about the filters and scores)
    in_sub = built.search_text(colour_model, "red", k=10, filters=Filters(path_prefix="sub/"), min_relevance=0)
    assert len(in_sub) == 4 and all(h.key.startswith("sub/") for h in in_sub)
    assert colour_of(in_sub[0]) == "red"
    absolute = built.search_text(
        colour_model, "red", k=10, filters=Filters(path_prefix=str(built.item(in_sub[0].id).path))
    )
    assert [h.id for h in absolute] == [in_sub[0].id]
    strong = built.search_text(colour_model, "red", k=10, min_score=0.9, min_relevance=0)
    assert strong and all(h.score >= 0.9 for h in strong) and len(strong) < 10
    assert built.search_text(colour_model, "red", k=10, min_score=1.01) == []
    assert built.search_text(colour_model, "red", filters=Filters(path_prefix="nowhere/")) == []


def test_caption_filter_on_a_table(tmp_path, colour_model):
    rows = []
    for i, concept in enumerate(fakes.CONCEPTS):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        fakes.draw(concept).save(path)
        rows.append(f"imgs/{i}.png,A {concept.upper()} drawing")
    (tmp_path / "list.csv").write_text("path,caption\n" + "\n".join(rows) + "\n")
    build_collection(tmp_path / "c", colour_model, tmp_path / "list.csv")
    found = Collection.open(tmp_path / "c")
    hits = found.search_text(colour_model, "red", k=5, filters=Filters(caption_contains="circle"), min_relevance=0)
    assert [h.caption for h in hits][:1] == ["A RED CIRCLE drawing"] and all("CIRCLE" in h.caption for h in hits)
    assert len(hits) == 4


def test_item_metadata_and_image_bytes(built, library):
    item = built.item("red_circle.png")
    assert item.path == str(library / "red_circle.png") and item.width == 48
    assert built.read_image_bytes(item.id) == (library / "red_circle.png").read_bytes()
    (library / "red_circle.png").write_bytes(b"replaced")  # changed since: no stale thumbnail
    assert built.read_image_bytes(item.id) is None
    info = built.info()
    assert info["items"] == 12 and info["skipped"] == 5 and info["search"] == "exact" and info["model"] == "colour"


def test_another_space_is_refused(tmp_path, built, library):
    from collection_fakes import ColourModel

    other = ColourModel(fingerprint="0123456789abcdef")
    with pytest.raises(CollectionSpaceError, match="another space|holds vectors of space"):
        built.search_text(other, "red")
    with pytest.raises(CollectionSpaceError, match="use a model of the collection's space"):
        build_collection(built.directory, other, library)
    assert Collection.open(built.directory).info()["items"] == 12  # untouched


def _indexed_and_live(directory) -> tuple[set[int], set[int]]:
    """The rows (seqs) the saved HNSW index holds, and the rows the collection's parts hold."""
    index = HnswIndex.load(directory / "index")
    assert index is not None, "no usable index saved"
    return set(index.labels.tolist()), set(Collection.open(directory).meta.column("seq").to_pylist())


def test_hnsw_matches_exact_search(tmp_path, colour_model):
    """Forcing the HNSW threshold down to a few rows: same top results as exact search, filters
    and deleted rows respected."""
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    images.mkdir()
    from PIL import Image

    for i in range(60):  # solid colours, spread over the colour cube
        Image.new("RGB", (8, 8), tuple(int(c) for c in rng.integers(0, 256, 3))).save(images / f"{i:03d}.png")
    build_collection(tmp_path / "exact", colour_model, images)
    build_collection(tmp_path / "ann", colour_model, images, settings=BuildSettings(hnsw_min_rows=10))
    exact, ann = Collection.open(tmp_path / "exact"), Collection.open(tmp_path / "ann")
    indexed, live = _indexed_and_live(tmp_path / "ann")
    assert len(indexed) == 60 and indexed == live
    assert exact.info()["search"] == "exact" and ann.info()["search"] == "hnsw"
    for text in ("red", "green", "blue", "yellow"):
        assert [h.id for h in ann.search_text(colour_model, text, k=5)] == [
            h.id for h in exact.search_text(colour_model, text, k=5)
        ]
    some = exact.meta.column("id")[7].as_py()
    assert [h.id for h in ann.search_like(some, k=5)] == [h.id for h in exact.search_like(some, k=5)]
    prefix = Filters(path_prefix="00")  # 000..009
    assert [h.id for h in ann.search_text(colour_model, "blue", k=3, filters=prefix)] == [
        h.id for h in exact.search_text(colour_model, "blue", k=3, filters=prefix)
    ]

    # delete the best red match: gone from results although the graph still holds it
    best = ann.search_text(colour_model, "red", k=1)[0]
    (images / best.key).unlink()
    report = build_collection(tmp_path / "ann", colour_model, images)
    assert report.removed == 1
    indexed, live = _indexed_and_live(tmp_path / "ann")  # kept, not rebuilt: the dead row stays in it
    assert len(indexed) == 60 and live < indexed and len(indexed - live) == 1
    again = Collection.open(tmp_path / "ann")
    assert again.info()["search"] == "hnsw"
    assert best.id not in [h.id for h in again.search_text(colour_model, "red", k=5)]
    assert len(again) == 59

    # a quarter of the index dead: rebuilt from the live rows; below the threshold: exact again
    for path in sorted(images.iterdir())[:20]:
        path.unlink()
    build_collection(tmp_path / "ann", colour_model, images)
    indexed, live = _indexed_and_live(tmp_path / "ann")
    assert len(indexed) == 39 and indexed == live
    for path in sorted(images.iterdir())[:35]:
        path.unlink()
    build_collection(tmp_path / "ann", colour_model, images)
    assert HnswIndex.load(tmp_path / "ann" / "index") is None
    assert not (tmp_path / "ann" / "index" / "hnsw.faiss").exists()
    assert Collection.open(tmp_path / "ann").info()["search"] == "exact"
    assert len(Collection.open(tmp_path / "ann").search_text(colour_model, "red", k=10, min_relevance=0)) == 4


@pytest.fixture
def swatches(tmp_path, colour_model) -> Collection:
    """Solid colours: purple shares red with the red swatch and blue with the blue one."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "purple": (150, 30, 210), "blue": (30, 40, 220), "green": (30, 170, 60)}
    folder = tmp_path / "swatches"
    folder.mkdir()
    for name, rgb in colours.items():
        Image.new("RGB", (16, 16), rgb).save(folder / f"{name}.png")
    build_collection(tmp_path / "swatches-c", colour_model, folder)
    return Collection.open(tmp_path / "swatches-c")


def test_weighted_terms_push_away_from_negative_terms(swatches, colour_model):
    def ranking(terms, **kw):
        return [h.key.removesuffix(".png") for h in swatches.search_terms(colour_model, terms, **kw)]

    red = Term("text", "red")
    assert ranking([red], k=2, min_relevance=0) == ["red", "purple"]  # purple is half red
    # minus blue: purple (half blue) falls below green (no blue at all); were the weight
    # ignored, red + blue would rank purple first
    assert ranking([red, Term("text", "blue", -1.0)]) == ["red", "green", "purple", "blue"]
    assert ranking([red, Term("text", "blue")])[0] == "purple"
    # one term: the same as the single-query methods
    single = swatches.search_terms(colour_model, [red], k=4)
    assert [(h.id, round(h.score, 5), round(h.relevance, 5)) for h in single] == [
        (h.id, round(h.score, 5), round(h.relevance, 5)) for h in swatches.search_text(colour_model, "red", k=4)
    ]
    assert single.matches == len(single)  # the same bar: a text alone is cut like a text query
    # an item term: its own vector, and the item itself left out; like red minus blue
    purple = swatches.item("purple.png").id
    assert ranking([Term("like", purple)]) == [h.key.removesuffix(".png") for h in swatches.search_like(purple)]
    assert ranking([Term("like", purple), Term("text", "blue", -2.0)], k=2) == ["red", "green"]
    # an image term, moved toward a text as far as the text's weight says
    blue = Term("image", solid((30, 40, 220)))
    assert ranking([blue], k=1) == ["blue"]
    assert ranking([blue, Term("text", "red", 0.5)], k=1) == ["purple"]
    assert ranking([blue, Term("text", "red", 3.0)], k=1) == ["red"]
    # k, min_score and filters apply as to any query
    assert ranking([red, Term("text", "blue", -1.0)], k=1) == ["red"]
    strong = swatches.search_terms(colour_model, [red, Term("text", "blue", -1.0)], min_score=0.5)
    assert strong and all(h.score >= 0.5 for h in strong) and len(strong) < 4
    assert ranking([red, Term("text", "blue", -1.0)], filters=Filters(path_prefix="p")) == ["purple"]


def test_queries_with_nothing_to_move_toward_are_refused(swatches, colour_model):
    with pytest.raises(QueryError, match="nothing to search toward"):
        swatches.search_terms(colour_model, [Term("text", "red", -1.0), Term("text", "blue", -1.0)])
    with pytest.raises(QueryError, match="at least one term"):
        swatches.search_terms(colour_model, [])
    with pytest.raises(QueryError, match="cancel out"):
        swatches.search_terms(colour_model, [Term("text", "red"), Term("text", "red", -1.0)])
    with pytest.raises(ValueError, match="finite"):
        Term("text", "red", float("nan"))
    with pytest.raises(ItemNotFound):
        swatches.search_terms(None, [Term("like", "nope")])


def solid(rgb):
    from PIL import Image

    return Image.new("RGB", (16, 16), rgb)
