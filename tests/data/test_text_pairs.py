import io
import json
import tarfile

import pytest

from latentspace.data.text_pairs import TextPairs, read_text_pairs


def test_jsonl_in_every_accepted_shape_malformed_lines_counted(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"query": "q1", "positive": "p1"}),
                json.dumps({"anchor": "q2", "positive": "p2"}),
                json.dumps(["q3", "p3"]),
                "{not json",
                json.dumps({"query": "", "positive": "p"}),
                json.dumps({"query": "only a query"}),
                "",
            ]
        )
    )
    pairs, skipped = read_text_pairs(str(path))
    assert pairs == [("q1", "p1"), ("q2", "p2"), ("q3", "p3")] and skipped == 3


def test_parquet_and_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["1", "2"], "query": ["a", "b"], "positive": ["x", "y"], "n": [1, 2]}),
        tmp_path / "pairs.parquet",
    )
    assert read_text_pairs(str(tmp_path / "pairs.parquet"))[0] == [("a", "x"), ("b", "y")]
    shard = tmp_path / "pairs.tar"
    with tarfile.open(shard, "w") as tar:
        for i, record in enumerate([{"query": "a", "positive": "x"}, ["b", "y"], {"nope": 1}]):
            data = json.dumps(record).encode()
            info = tarfile.TarInfo(f"{i:04d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pairs, skipped = read_text_pairs(str(shard))
    assert pairs == [("a", "x"), ("b", "y")] and skipped == 1


def test_too_few_pairs_and_missing_files_are_clear(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(["a", "b"]) + "\n")
    with pytest.raises(ValueError, match="1 usable text pair"):
        read_text_pairs(str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_text_pairs(str(tmp_path / "missing.jsonl"))


def test_batches_are_a_function_of_the_step(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps([f"q{i}", f"p{i}"]) for i in range(50)))
    pairs = TextPairs(str(path), seed=3, ratio=0.25, batch_size=8)
    assert pairs.batch(7) == pairs.batch(7) and pairs.batch(7) != pairs.batch(8)
    queries, positives = pairs.batch(7)
    assert len(set(queries)) == 8 and [q[1:] for q in queries] == [p[1:] for p in positives]
    assert [pairs.is_text_step(s) for s in range(8)] == [False, False, False, True] * 2
