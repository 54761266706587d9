import pytest
import torch

from latentspace.data.text_cache import TextEmbeddingCache
from latentspace.space import SpaceIdentity, SpaceMismatchError

SPACE = SpaceIdentity("toy", "f00d", 4)


def _encode(texts):
    return torch.stack([torch.full((4,), float(len(t))) for t in texts])


def test_fill_lookup_and_persist(tmp_path):
    cache = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    assert cache.fill(["a", "bb", "a", "ccc"], _encode, batch_size=2) == 3
    assert cache.lookup(["ccc", "a", "a"])[:, 0].tolist() == [3.0, 1.0, 1.0]
    again = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    assert len(again) == 3 and again.fill(["a", "dddd"], _encode) == 1
    assert again.lookup(["dddd"])[0, 0] == 4.0


def test_missing_caption_is_a_clear_error(tmp_path):
    cache = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    with pytest.raises(KeyError, match="not in the text cache"):
        cache.lookup(["never added"])


def test_spaces_and_tasks_never_share_vectors(tmp_path):
    TextEmbeddingCache(tmp_path, SPACE, "search_query").fill(["a"], _encode)
    other = TextEmbeddingCache(tmp_path, SpaceIdentity("toy", "beef", 4), "search_query")
    assert len(other) == 0 and other.dir != TextEmbeddingCache(tmp_path, SPACE, "search_query").dir
    assert len(TextEmbeddingCache(tmp_path, SPACE, "search_document")) == 0


def test_foreign_meta_is_refused(tmp_path):
    cache = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    (cache.dir / "meta.json").write_text('{"space": {"name": "other"}}')
    with pytest.raises(SpaceMismatchError):
        TextEmbeddingCache(tmp_path, SPACE, "search_query")


def test_torn_write_is_trimmed(tmp_path):
    cache = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    cache.fill(["a", "bb"], _encode)
    with open(cache.dir / "vectors.f32", "ab") as f:  # a crash mid-row: half a vector, no index line
        f.write(b"\x00" * 6)
    reopened = TextEmbeddingCache(tmp_path, SPACE, "search_query")
    assert len(reopened) == 2
    reopened.fill(["ccc"], _encode)
    assert reopened.lookup(["ccc", "bb"])[:, 0].tolist() == [3.0, 2.0]
