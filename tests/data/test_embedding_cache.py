"""The frozen-tower embedding cache: persistence, isolation of spaces, crash safety, and its on-disk format."""

import hashlib
import json

import numpy as np
import pytest
import torch

from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.space import SpaceIdentity, SpaceMismatchError

SPACE = SpaceIdentity("toy", "f00d", 4)


def _encode(texts):
    return torch.stack([torch.full((4,), float(len(t))) for t in texts])


def test_fill_lookup_and_persist(tmp_path):
    cache = EmbeddingCache(tmp_path, SPACE, "search_query")
    assert cache.fill(["a", "bb", "a", "ccc"], _encode, batch_size=2) == 3
    assert cache.lookup(["ccc", "a", "a"])[:, 0].tolist() == [3.0, 1.0, 1.0]
    again = EmbeddingCache(tmp_path, SPACE, "search_query")
    assert len(again) == 3 and again.fill(["a", "dddd"], _encode) == 1
    assert again.lookup(["dddd"])[0, 0] == 4.0


def test_a_missing_key_is_a_clear_error(tmp_path):
    cache = EmbeddingCache(tmp_path, SPACE, "search_query")
    with pytest.raises(KeyError, match="not in the embedding cache"):
        cache.lookup(["never added"])


def test_spaces_and_tasks_never_share_vectors(tmp_path):
    EmbeddingCache(tmp_path, SPACE, "search_query").fill(["a"], _encode)
    other = EmbeddingCache(tmp_path, SpaceIdentity("toy", "beef", 4), "search_query")
    assert len(other) == 0 and other.dir != EmbeddingCache(tmp_path, SPACE, "search_query").dir
    assert len(EmbeddingCache(tmp_path, SPACE, "search_document")) == 0


def test_foreign_meta_is_refused(tmp_path):
    cache = EmbeddingCache(tmp_path, SPACE, "search_query")
    (cache.dir / "meta.json").write_text('{"space": {"name": "other"}}')
    with pytest.raises(SpaceMismatchError):
        EmbeddingCache(tmp_path, SPACE, "search_query")


def test_torn_write_is_trimmed(tmp_path):
    cache = EmbeddingCache(tmp_path, SPACE, "search_query")
    cache.fill(["a", "bb"], _encode)
    with open(cache.dir / "vectors.f32", "ab") as f:  # a crash mid-row: half a vector, no index line
        f.write(b"\x00" * 6)
    reopened = EmbeddingCache(tmp_path, SPACE, "search_query")
    assert len(reopened) == 2
    reopened.fill(["ccc"], _encode)
    assert reopened.lookup(["ccc", "bb"])[:, 0].tolist() == [3.0, 2.0]


def test_a_cache_in_the_on_disk_format_reads_back(tmp_path):
    """Caches already on disk keep working: the folder name, meta.json, keys.tsv and vectors.f32
    exactly as written here (for image caches too, whose keys are sample ids)."""
    space = SpaceIdentity("frozen-image-x", "cafe", 2)
    folder = tmp_path / "frozen-image-x-2d-cafe-image"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"space": space.to_dict(), "task_type": "image", "dtype": "float32"}))
    np.array([[1, 2], [3, 4]], dtype="<f4").tofile(folder / "vectors.f32")
    hashes = [hashlib.sha256(k.encode()).hexdigest()[:32] for k in ("shard-0/0001", "shard-0/0002")]
    (folder / "keys.tsv").write_text(f"{hashes[0]}\t0\n{hashes[1]}\t1\n")
    cache = EmbeddingCache(tmp_path, space, "image")
    assert cache.dir == folder and len(cache) == 2
    assert cache.lookup(["shard-0/0002", "shard-0/0001"]).tolist() == [[3.0, 4.0], [1.0, 2.0]]
    cache.add(["shard-1/0001"], torch.tensor([[5.0, 6.0]]))
    assert (folder / "keys.tsv").read_text().splitlines()[-1].endswith("\t2")
    assert np.fromfile(folder / "vectors.f32", dtype="<f4").tolist() == [1, 2, 3, 4, 5, 6]
