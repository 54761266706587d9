"""Whole-file replacement: the new file lands only when its writing finished."""

from __future__ import annotations

import pytest

from latentspace import atomic


def test_the_new_file_replaces_the_old_one_and_nothing_else_is_left(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with atomic.replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # readers see the old file until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, durable):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed mid-write"), atomic.replacing(target, durable=durable) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failure_before_anything_was_written_is_clean_too(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(ValueError, match="nothing written"), atomic.replacing(target):
        raise ValueError("nothing written")
    assert list(tmp_path.iterdir()) == []


def test_write_helpers_create_and_replace(tmp_path):
    atomic.write_bytes(tmp_path / "a.bin", b"\x00\x01", durable=True)
    atomic.write_text(tmp_path / "b.txt", "één\n")
    atomic.write_text(tmp_path / "b.txt", "twee\n", durable=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "twee\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_temporary_names_match_the_sweep_of_leftovers(tmp_path):
    """Collection folders delete `.*.tmp-*` leftovers of a killed build; every temporary file
    this module makes has such a name, and two writers of one target never share one."""
    with (
        atomic.replacing(tmp_path / "part-000001.parquet") as first,
        atomic.replacing(tmp_path / "part-000001.parquet") as second,
    ):
        first.write_bytes(b"1")
        second.write_bytes(b"2")
        assert first != second
        assert sorted(tmp_path.glob(".*.tmp-*")) == sorted([first, second])
