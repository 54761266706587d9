"""Reading suites and tasks in the CLIP_benchmark / DataComp on-disk format."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from latentspace.eval.tasks import (
    CLASSIFICATION,
    RETRIEVAL,
    SampleStats,
    TaskSpec,
    iter_task_samples,
    load_suite,
    read_templates,
    task_type_of,
)


def test_classification_samples_stream_from_all_shards(classification_task):
    stats = SampleStats()
    samples = list(iter_task_samples(classification_task, stats=stats))
    assert len(samples) == 8 and stats.n_yielded == 8 and stats.n_skipped == 0
    assert all(isinstance(image, Image.Image) for image, _, _ in samples)
    assert sorted(label for _, label, _ in samples) == [0, 0, 0, 1, 1, 1, 2, 3]
    assert {key.split("_")[0] for _, _, key in samples} == {"s0", "s1"}  # both shards read


def test_retrieval_samples_carry_every_caption(retrieval_task):
    samples = list(iter_task_samples(retrieval_task))
    assert task_type_of(retrieval_task) == RETRIEVAL
    assert [captions for _, captions, _ in samples][0] == ["a red square", "red"]
    assert all(len(captions) == 2 for _, captions, _ in samples)


def test_bad_samples_are_skipped_and_counted(make_task, encode_image):
    task = make_task(
        "bad",
        [
            {"png": encode_image("red"), "cls": 0},
            {"png": os.urandom(64), "cls": 0},  # corrupt image bytes
            {"png": encode_image("red")[:40], "cls": 1},  # truncated image
            {"png": encode_image("green")},  # no label
            {"png": encode_image("green"), "cls": 7},  # label outside classnames
            {"png": encode_image("green"), "cls": "x"},  # label not an integer
            {"cls": 1, "json": b"{}"},  # no image
        ],
        classnames=["red", "green"],
    )
    stats = SampleStats()
    kept = list(iter_task_samples(task, stats=stats))
    assert len(kept) == 1
    assert stats.n_skipped == 6
    assert stats.skipped == {
        "undecodable image": 2,
        "missing cls": 1,
        "cls out of range": 1,
        "invalid cls": 1,
        "missing image": 1,
    }


def test_retrieval_sample_without_captions_is_skipped(make_task, encode_image):
    task = make_task(
        "caps",
        [
            {"png": encode_image("red"), "txt": "red"},
            {"png": encode_image("red"), "txt": "\n \n"},
            {"png": encode_image("red")},
        ],
        dataset_type="retrieval",
    )
    stats = SampleStats()
    assert len(list(iter_task_samples(task, stats=stats))) == 1
    assert stats.skipped == {"empty txt": 1, "missing txt": 1}


def test_missing_task_dir_and_shard_raise_with_the_path(tmp_path, classification_task):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_task_samples(tmp_path / "nowhere"))
    (classification_task / "test" / "1.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"1\.tar"):
        next(iter_task_samples(classification_task))


def test_templates_default_to_the_bare_class_name(make_task, encode_image):
    task = make_task("plain", [{"png": encode_image("red"), "cls": 0}], classnames=["red"])
    assert read_templates(task) == ["{c}"]
    (task / "zeroshot_classification_templates.txt").write_text("a photo\n")
    with pytest.raises(ValueError, match="placeholder"):
        read_templates(task)


def test_load_suite(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: emoji\n"
        "tasks:\n"
        "  - {name: emoji_noto_all, type: zeroshot_classification, main_metric: acc1, description: Noto art}\n"
        "  - {name: emoji_captions, type: retrieval}\n"
    )
    name, specs, root = load_suite(suite)
    assert name == "emoji" and root == tmp_path
    assert specs == [
        TaskSpec("emoji_noto_all", CLASSIFICATION, "acc1", "Noto art"),
        TaskSpec("emoji_captions", RETRIEVAL, "mean_recall@1"),
    ]


@pytest.mark.parametrize(
    "task, message",
    [
        ("{name: a, type: segmentation}", "type"),
        ("{name: a, type: retrieval, main_metric: acc1}", "cannot rank"),
        ("{type: retrieval}", "name"),
        ("{name: a, type: retrieval, group_by: 0}", "group_by"),
        ("{name: a, group_by: -1}", "group_by"),
        ("{name: a, group_by: region}", "group_by"),
        ("{name: a, main_metric: acc1_worst_group}", "needs group_by"),
        ("{name: a, aliases: other}", "aliases"),
    ],
)
def test_load_suite_rejects_bad_entries(tmp_path, task, message):
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: s\ntasks:\n  - {task}\n")
    with pytest.raises(ValueError, match=message):
        load_suite(suite)


def test_load_suite_rejects_duplicates(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(ValueError, match="duplicate"):
        load_suite(suite)
