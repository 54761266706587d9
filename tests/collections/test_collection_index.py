"""Nearest-neighbour search over a collection's vectors (collections/index.py): exact search, when
a collection gets an HNSW index, HNSW answers against exact ones, the allow-list that hides rows,
and the index files (saved, loaded, refused when they do not agree)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentspace.collections.index import (
    EXACT_MAX_FLOATS,
    HNSW_PARAMS,
    INDEX_FILE,
    INFO_FILE,
    LABELS_FILE,
    HnswIndex,
    HnswParams,
    exact_search,
    remove_index,
    top_k,
    use_ann,
)

DIM = 16


def clustered(n: int, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    rows = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, HnswIndex]:
    vectors = clustered(600)
    labels = np.arange(600, dtype=np.int64) * 10 + 7  # labels are seqs, not positions
    return vectors, labels, HnswIndex.build(vectors, labels)


def test_exact_search_up_to_the_threshold_hnsw_above_it():
    assert not use_ann(EXACT_MAX_FLOATS // 768, 768)
    assert use_ann(EXACT_MAX_FLOATS // 768 + 1, 768)
    assert use_ann(EXACT_MAX_FLOATS // 384 + 1, 384) and not use_ann(EXACT_MAX_FLOATS // 384, 384)
    # a collection's own threshold (--hnsw-min-rows) replaces the size rule, both ways
    assert use_ann(10, 768, min_rows=10) and not use_ann(9, 768, min_rows=10)
    assert not use_ann(10**7, 768, min_rows=10**8)


def test_top_k_is_best_first_with_ties_broken_by_position():
    scores = np.array([0.1, 0.9, 0.5, 0.9, -1.0, 0.5])
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 5, 0, 4]  # more than there are: all of them
    assert top_k(scores, 0).tolist() == [] and top_k(np.array([]), 3).tolist() == []


def test_exact_search_finds_the_largest_inner_products():
    vectors = clustered(200, seed=1)
    query = vectors[17]
    scores, rows = exact_search(vectors, query, 5)
    expected = np.argsort(-(vectors @ query), kind="stable")[:5]
    assert rows.tolist() == expected.tolist() and rows[0] == 17
    np.testing.assert_allclose(scores, vectors[rows] @ query)
    assert scores[0] == pytest.approx(1.0, abs=1e-6)


def test_hnsw_agrees_with_exact_search_on_clustered_data(data):
    vectors, labels, index = data
    assert len(index) == 600 and index.dim == DIM and index.params == HNSW_PARAMS
    found = 0
    for q in range(0, 600, 40):
        scores, ids = index.search(vectors[q], 10)
        _, expected = exact_search(vectors, vectors[q], 10)
        assert ids[0] == q and labels[ids[0]] == q * 10 + 7
        np.testing.assert_allclose(scores, vectors[ids] @ vectors[q], atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-6)  # best first
        found += len(set(ids.tolist()) & set(expected.tolist()))
    assert found / (15 * 10) >= 0.95  # recall@10


def test_the_allow_list_leaves_rows_out(data):
    """How deleted rows (still in the graph: HNSW cannot delete) and filtered-out rows stay out of
    the answers."""
    vectors, _, index = data
    query = vectors[5]
    allowed = np.ones(600, dtype=bool)
    best = index.search(query, 5)[1]
    allowed[best] = False
    scores, ids = index.search(query, 5, allowed=allowed)
    assert len(ids) == 5 and not set(ids.tolist()) & set(best.tolist())
    _, expected = exact_search(vectors[allowed], query, 5)
    assert sorted(ids.tolist()) == sorted(np.flatnonzero(allowed)[expected].tolist())

    # Fewer allowed rows than asked for: those near the query, and no padding (faiss's -1).
    _, ranked = exact_search(vectors, query, 13)
    near = np.zeros(600, dtype=bool)
    near[ranked[10:13]] = True
    assert sorted(index.search(query, 10, allowed=near)[1].tolist()) == sorted(ranked[10:13].tolist())
    assert len(index.search(query, 10, allowed=np.zeros(600, dtype=bool))[1]) == 0
    # Rows scattered far from the query may be missed (the graph walk never reaches them), which is
    # why Collection searches a small allowed set exactly; but nothing outside the set ever shows.
    far = np.zeros(600, dtype=bool)
    far[[3, 300, 599]] = True
    assert set(index.search(query, 10, allowed=far)[1].tolist()) <= {3, 300, 599}


def test_rows_are_added_to_an_existing_index(data):
    vectors, labels, _ = data
    index = HnswIndex.build(vectors[:400], labels[:400])
    index.add(vectors[400:], labels[400:])
    index.add(vectors[:0], labels[:0])  # nothing new: nothing changes
    assert len(index) == 600 and index.labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(index.vectors(), vectors)
    assert index.search(vectors[550], 1)[1].tolist() == [550]


def test_the_vectors_view_is_read_only(data):
    vectors, _, index = data
    view = index.vectors()
    np.testing.assert_array_equal(view, vectors)
    with pytest.raises(ValueError):
        view[0, 0] = 2.0
    empty = HnswIndex.build(vectors[:0], np.empty(0, dtype=np.int64))
    assert empty.vectors().shape == (0, DIM) and len(empty) == 0


def test_an_index_saved_and_loaded_answers_the_same(tmp_path, data):
    vectors, labels, _ = data
    params = HnswParams(M=16, ef_construction=40, ef_search=64)
    index = HnswIndex.build(vectors, labels, params)
    index.save(tmp_path / "index")
    info = json.loads((tmp_path / "index" / INFO_FILE).read_text())
    assert info == {"kind": "hnsw", "metric": "inner_product", "rows": 600, "dim": DIM, "M": 16,
                    "ef_construction": 40, "ef_search": 64}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == sorted([INDEX_FILE, LABELS_FILE, INFO_FILE])

    loaded = HnswIndex.load(tmp_path / "index")
    assert loaded is not None and loaded.params == params and loaded.index.hnsw.efSearch == 64
    assert loaded.labels.tolist() == labels.tolist()
    for q in (0, 123, 599):
        assert loaded.search(vectors[q], 8)[1].tolist() == index.search(vectors[q], 8)[1].tolist()


def test_index_files_that_do_not_agree_are_ignored(tmp_path, data):
    """A crash between the renames of a save, or a damaged file: load says there is no index (the
    next build rebuilds it) rather than answering with the wrong labels."""
    vectors, labels, index = data
    directory = tmp_path / "index"
    assert HnswIndex.load(directory) is None  # nothing saved yet
    index.save(directory)

    np.save(directory / LABELS_FILE, labels[:599])  # labels of another save
    assert HnswIndex.load(directory) is None

    index.save(directory)
    info = json.loads((directory / INFO_FILE).read_text())
    (directory / INFO_FILE).write_text(json.dumps({**info, "rows": 400}))
    assert HnswIndex.load(directory) is None

    index.save(directory)
    data_bytes = (directory / INDEX_FILE).read_bytes()
    (directory / INDEX_FILE).write_bytes(data_bytes[: len(data_bytes) // 3])  # truncated
    assert HnswIndex.load(directory) is None

    index.save(directory)
    (directory / INFO_FILE).write_text("{not json")
    assert HnswIndex.load(directory) is None

    index.save(directory)
    assert HnswIndex.load(directory) is not None  # whole again


def test_remove_index_deletes_its_files_only(tmp_path, data):
    _, _, index = data
    directory = tmp_path / "index"
    index.save(directory)
    (directory / "notes.txt").write_text("someone else's file")
    remove_index(directory)
    assert [p.name for p in directory.iterdir()] == ["notes.txt"]
    remove_index(directory)  # nothing left to remove: no error
    assert HnswIndex.load(directory) is None
