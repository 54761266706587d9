"""The on-disk layout of a collection (collections/store.py): Parquet parts that any Parquet reader
opens, the collection.json manifest, skipped.jsonl, the build lock, and rewriting a part without
re-embedding. Damaged or foreign files are refused loudly, never read as less data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentspace.collections import BuildSettings, build_collection, store
from latentspace.collections.sources import ShardItem, Source
from latentspace.collections.store import (
    CollectionBusy,
    CollectionError,
    CollectionNotFound,
    CollectionSpaceError,
    Manifest,
)
from latentspace.space import SpaceIdentity, SpaceMismatchError

IDENTITY = SpaceIdentity("test-space", "0123456789abcdef", 4)
INFO = {"model": "test-model", "dim": 4, "dtype": "float32", "space": str(IDENTITY)}


def unit_rows(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def columns(n: int, ordinal: int = 0) -> dict[str, list]:
    """Metadata for `n` rows of part `ordinal`, every column filled with something recognisable."""
    return {
        "seq": [store.seq_of(ordinal, i) for i in range(n)],
        "id": [f"{ordinal:08x}{i:08x}" for i in range(n)],
        "source": [0] * n,
        "key": [f"img/{i}.png" for i in range(n)],
        "path": [f"/data/img/{i}.png" for i in range(n)],
        "url": [None] * n,
        "shard": [None] * n,
        "offset": [None] * n,
        "length": [None] * n,
        "caption": [f"caption {i}" for i in range(n)],
        "width": [10 + i for i in range(n)],
        "height": [20 + i for i in range(n)],
        "sha256": [f"{i:064x}" for i in range(n)],
        "size": [1000 + i for i in range(n)],
        "mtime_ns": [10**18 + i for i in range(n)],
    }


def write_part(directory, n: int = 5, ordinal: int = 0, dtype: str = "float32", seed: int = 0):
    path = directory / store.PARTS / f"{store.part_name(ordinal)}.parquet"
    vectors = unit_rows(n, seed=seed)
    assert store.write_part(path, columns(n, ordinal), vectors, dtype, INFO) == n
    return path, vectors


def manifest(**overrides) -> Manifest:
    fields = dict(name="c", model="test-model", identity=IDENTITY, dtype="float32", settings={"max_pixels": 10})
    return Manifest(**{**fields, **overrides})


# --- parts ---------------------------------------------------------------------------------------


def test_a_part_is_plain_parquet_with_the_documented_columns(tmp_path):
    path, vectors = write_part(tmp_path)
    assert path.name == "part-000000.parquet"
    table = pq.read_table(path)  # no latentspace code needed to read it
    assert table.column_names == [*store.META_COLUMNS, "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.column("key").to_pylist() == [f"img/{i}.png" for i in range(5)]
    assert table.column("url").to_pylist() == [None] * 5
    np.testing.assert_array_equal(store.read_vectors(path), vectors)
    np.testing.assert_array_equal(store.read_vectors(path, np.array([3, 1])), vectors[[3, 1]])
    assert store.part_rows(path) == 5
    assert store.read_part_info(path) == {"format": store.PART_FORMAT, **INFO}  # the part says what it holds
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


def test_float16_parts_hold_half_precision_read_back_as_float32(tmp_path):
    path, vectors = write_part(tmp_path, dtype="float16")
    assert pq.read_schema(path).field("embedding").type == pa.list_(pa.float16(), 4)
    read = store.read_vectors(path)
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, vectors.astype(np.float16).astype(np.float32))
    assert not np.array_equal(read, vectors)  # it really was stored in half precision


def test_the_same_rows_give_the_same_bytes(tmp_path):
    """What lets a resumed build match an uninterrupted one file for file."""
    first, _ = write_part(tmp_path / "a")
    second, _ = write_part(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    third, _ = write_part(tmp_path / "c", seed=1)
    assert third.read_bytes() != first.read_bytes()


def test_seq_numbers_name_the_part_and_the_position():
    seq = store.seq_of(3, 7)
    assert seq >> store.POSITION_BITS == 3 and seq & (2**store.POSITION_BITS - 1) == 7
    assert store.seq_of(1, 0) > store.seq_of(0, 2**store.POSITION_BITS - 1)  # parts never overlap


def test_read_meta_concatenates_parts_in_order_without_vectors(tmp_path):
    first, _ = write_part(tmp_path, n=3, ordinal=0)
    second, _ = write_part(tmp_path, n=2, ordinal=1)
    meta = store.read_meta([second, first])
    assert "embedding" not in meta.column_names
    assert meta.column("seq").to_pylist() == [store.seq_of(1, 0), store.seq_of(1, 1), 0, 1, 2]
    assert store.read_meta([first], ["seq", "key"]).column_names == ["seq", "key"]
    empty = store.read_meta([], ["seq", "caption"])
    assert empty.num_rows == 0 and empty.schema.names == ["seq", "caption"]
    assert empty.schema.field("seq").type == pa.int64()


def test_rewrite_part_removes_rows_and_refreshes_stats_copying_the_vectors(tmp_path):
    src, vectors = write_part(tmp_path)
    dst = tmp_path / "staging" / src.name
    seqs = columns(5)["seq"]
    rows = store.rewrite_part(src, dst, delete={seqs[1], seqs[3]}, stats={seqs[4]: (7, 8)})
    assert rows == store.part_rows(dst) == 3
    table = pq.read_table(dst)
    assert table.column("seq").to_pylist() == [seqs[0], seqs[2], seqs[4]]
    assert table.column("size").to_pylist() == [1000, 1002, 7]
    assert table.column("mtime_ns").to_pylist() == [10**18, 10**18 + 2, 8]
    assert table.column("caption").to_pylist() == ["caption 0", "caption 2", "caption 4"]
    np.testing.assert_array_equal(store.read_vectors(dst), vectors[[0, 2, 4]])
    assert store.read_part_info(dst) == store.read_part_info(src)  # still says what it holds

    # Idempotent: redoing the rewrite (a build interrupted after it) gives the same file, and
    # deleting rows that are already gone changes nothing.
    again = tmp_path / "again.parquet"
    store.rewrite_part(dst, again, delete={seqs[1], seqs[3]}, stats={seqs[4]: (7, 8)})
    assert again.read_bytes() == dst.read_bytes()


def test_rewrite_part_can_empty_a_part(tmp_path):
    src, _ = write_part(tmp_path, n=2)
    dst = tmp_path / "empty.parquet"
    assert store.rewrite_part(src, dst, delete=set(columns(2)["seq"]), stats={}) == 0
    assert store.read_vectors(dst).shape == (0, 4)


@pytest.mark.parametrize("damage", ["truncated", "footer", "not parquet"])
def test_a_damaged_part_is_an_error_not_fewer_rows(tmp_path, damage):
    path, _ = write_part(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":  # a copy cut short
        path.write_bytes(data[: len(data) // 2])
    elif damage == "footer":  # the trailing magic overwritten
        path.write_bytes(data[:-4] + b"XXXX")
    else:
        path.write_text("seq,id\n1,abc\n")
    for read in (store.part_rows, store.read_part_info, store.read_vectors, lambda p: store.read_meta([p])):
        with pytest.raises(pa.ArrowInvalid):
            read(path)
    with pytest.raises(pa.ArrowInvalid):
        store.rewrite_part(path, tmp_path / "out.parquet", delete=set(), stats={})
    assert not (tmp_path / "out.parquet").exists()


def test_a_failed_write_leaves_the_old_part_in_place(tmp_path):
    path, vectors = write_part(tmp_path, n=3)
    before = path.read_bytes()
    with pytest.raises((pa.ArrowInvalid, ValueError)):  # 3 rows of metadata, 2 vectors
        store.write_part(path, columns(3), vectors[:2], "float32", INFO)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --- the manifest, skipped.jsonl ----------------------------------------------------------------


def test_the_manifest_reads_back_as_it_was_saved(tmp_path):
    parts = [
        store.PartEntry("part-000000", 0, 0, "files", rows=5),
        store.PartEntry("part-000001", 1, 1, "shard", rows=3, shard=ShardItem("/s/a.tar", 10, 20)),
    ]
    saved = manifest(
        sources=[Source("folder", "/data", "/data"), Source("shards", "/s/a.tar", "/s/a.tar")],
        parts=parts,
        next_ordinal=1,
        hnsw_min_rows=100,
        counts={"items": 5, "parts": 1, "skipped": 0},
        updated="2024-01-01T00:00:00+00:00",
    )
    saved.save(tmp_path)
    raw = json.loads((tmp_path / store.MANIFEST).read_text())
    assert raw["format"] == store.FORMAT and raw["dim"] == 4 and raw["space"] == str(IDENTITY)
    assert raw["parts"][1] == {
        "name": "part-000001",
        "ordinal": 1,
        "source": 1,
        "kind": "shard",
        "shard": {"url": "/s/a.tar", "size": 10, "mtime_ns": 20},
        "rows": 3,
    }
    assert raw["sources"][0] == {"kind": "folder", "location": "/data", "spec": "/data"}
    assert list(raw) == sorted(raw)  # sorted keys: a manifest diffs cleanly
    loaded = Manifest.load(tmp_path)
    assert loaded == saved and loaded.dim == 4
    assert loaded.source_index("/data") == 0 and loaded.source_index("/elsewhere") is None


def test_a_manifest_of_another_format_is_refused(tmp_path):
    manifest().save(tmp_path)
    raw = json.loads((tmp_path / store.MANIFEST).read_text())
    (tmp_path / store.MANIFEST).write_text(json.dumps({**raw, "format": "latentspace.collection/2"}))
    with pytest.raises(CollectionError, match="not a collection manifest of format .*'latentspace.collection/2'"):
        Manifest.load(tmp_path)
    (tmp_path / store.MANIFEST).write_text(json.dumps({"name": "c"}))  # some other tool's JSON
    with pytest.raises(CollectionError, match="found None"):
        Manifest.load(tmp_path)
    (tmp_path / store.MANIFEST).write_text('{"format": "latentspace.coll')  # cut short
    with pytest.raises(json.JSONDecodeError):
        Manifest.load(tmp_path)


def test_skipped_entries_round_trip(tmp_path):
    assert store.read_skipped(tmp_path) == []  # no file yet: nothing skipped
    entries = [{"key": "bad/é.png", "reason": "undecodable", "source": 0}, {"key": "x.jpg", "reason": "empty"}]
    store.write_skipped(tmp_path, entries)
    lines = (tmp_path / store.SKIPPED).read_text().splitlines()
    assert [json.loads(line) for line in lines] == entries  # one JSON object a line
    assert "é" in lines[0]  # written as text, not escaped
    assert store.read_skipped(tmp_path) == entries
    store.write_skipped(tmp_path, [])
    assert (tmp_path / store.SKIPPED).read_text() == "" and store.read_skipped(tmp_path) == []


# --- finding a collection, its space ------------------------------------------------------------


def test_resolve_collection_by_path_or_by_name_under_the_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "photos").mkdir(parents=True)
    manifest().save(root / "photos")
    assert store.resolve_collection(root / "photos") == root / "photos"
    assert store.resolve_collection("photos", root=root) == root / "photos"
    with pytest.raises(CollectionNotFound, match=r"no collection at 'films' \(nor .*root/films\); build one"):
        store.resolve_collection("films", root=root)
    # a path with a slash is a path: never looked up under the root
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CollectionNotFound) as error:
        store.resolve_collection("sub/photos", root=root)
    assert "nor" not in str(error.value)
    assert isinstance(error.value, FileNotFoundError)


def test_a_model_of_another_space_is_refused(tmp_path):
    m = manifest()
    store.check_space(m, SpaceIdentity("test-space", "0123456789abcdef", 4), what="model x", directory=tmp_path)
    for other in (
        SpaceIdentity("test-space", "fedcba9876543210", 4),
        SpaceIdentity("test-space", "0123456789abcdef", 8),
    ):
        with pytest.raises(CollectionSpaceError, match="model x is in latent space .* holds vectors of space") as e:
            store.check_space(m, other, what="model x", directory=tmp_path)
        assert isinstance(e.value, SpaceMismatchError) and "test-model" in str(e.value)


# --- the build lock ------------------------------------------------------------------------------


def test_the_lock_is_held_for_the_block_only(tmp_path):
    with store.build_lock(tmp_path / "c"):
        with pytest.raises(CollectionBusy, match="another build is running on"), store.build_lock(tmp_path / "c"):
            pass
        with store.build_lock(tmp_path / "other"):  # another collection is another lock
            pass
    with store.build_lock(tmp_path / "c"):  # released at the end of the block
        pass
    with pytest.raises(RuntimeError), store.build_lock(tmp_path / "c"):
        raise RuntimeError("a build that failed")
    with store.build_lock(tmp_path / "c"):  # and when the block raised
        pass


def test_a_lock_held_by_another_process_is_freed_when_it_is_killed(tmp_path):
    """A build killed with SIGKILL cannot clean up: the kernel drops its lock, so no stale lock
    ever blocks the next build."""
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from latentspace.collections.store import build_lock
        with build_lock(Path({str(tmp_path / "c")!r})):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(CollectionBusy), store.build_lock(tmp_path / "c"):
            pass
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()
    with store.build_lock(tmp_path / "c"):
        pass


# --- a real build's files -----------------------------------------------------------------------


def test_a_built_collection_is_laid_out_as_documented(tmp_path, library, colour_model):
    directory = tmp_path / "c"
    build_collection(directory, colour_model, library, settings=BuildSettings(max_pixels=10_000, files_per_part=5))
    m = Manifest.load(directory)
    assert m.identity == colour_model.identity and m.dtype == "float32"
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "collection.json", "parts", "skipped.jsonl"]
    files = sorted((directory / store.PARTS).iterdir())
    assert [f.stem for f in files] == [p.name for p in m.parts]
    assert [store.part_rows(f) for f in files] == [p.rows for p in m.parts]
    assert m.counts == {"items": 12, "parts": len(files), "skipped": 5}

    meta = store.read_meta(files)
    assert meta.num_rows == 12 == len(set(meta.column("id").to_pylist()))
    assert sorted(meta.column("key").to_pylist())[:2] == ["blue_circle.png", "blue_square.png"]
    for f in files:
        info = store.read_part_info(f)
        assert info["format"] == store.PART_FORMAT and info["dim"] == 4
        assert info["identity"] == colour_model.identity.to_dict()
        vectors = store.read_vectors(f)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)  # unit length

    skipped = store.read_skipped(directory)
    assert sorted(s["key"] for s in skipped) == [
        "bad/corrupt.png",
        "bad/empty.jpg",
        "bad/gone.png",
        "bad/huge.png",
        "bad/notes.png",
    ]
    assert all(s["reason"] for s in skipped)
