"""The DataComp suite file, data_dir resolution, incomplete suites, multilabel and ImageFolder tasks."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from latentspace.eval.metrics import average_precision, chance_levels, multilabel_metrics
from latentspace.eval.runner import evaluate_suite, evaluate_task
from latentspace.eval.tasks import (
    CLASSIFICATION,
    MULTILABEL,
    SampleStats,
    TaskSpec,
    iter_task_samples,
    load_groups,
    load_suite,
)

DATACOMP_GROUP_SIZES = {"imagenet": 1, "imagenet_dist_shifts": 6, "vtab": 13, "retrieval": 3}


def test_datacomp_suite_has_38_tasks_and_valid_groups(tmp_path):
    name, specs, root = load_suite("datacomp", data_dir=tmp_path)
    assert name == "datacomp" and root == tmp_path
    names = [spec.name for spec in specs]
    assert len(names) == 38 == len(set(names))
    assert all(n.startswith("wds_") for n in names)
    groups = load_groups("datacomp")
    assert {g: len(m) for g, m in groups.items()} == DATACOMP_GROUP_SIZES
    assert all(member in names for members in groups.values() for member in members)
    by_name = {spec.name: spec for spec in specs}
    assert by_name["wds_imagenet1k"].main_metric == "acc1"
    assert by_name["wds_fgvc_aircraft"].main_metric == "mean_per_class_recall"
    assert by_name["wds_flickr30k"].main_metric == "mean_recall@1"
    # DataComp's worst-group scores: FMoW and GeoDE top-1 by region, Dollar Street top-5 by income
    assert [
        (by_name[n].main_metric, by_name[n].group_by)
        for n in ("wds_wilds-fmow", "wds_fairness-geode", "wds_fairness-dollar_street")
    ] == [("acc1_worst_group", 0), ("acc1_worst_group", 0), ("acc5_worst_group", 0)]
    assert sum(spec.group_by is not None for spec in specs) == 3


def test_suite_directory_is_the_default_task_root(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: a}\n")
    assert load_suite(suite)[2] == tmp_path
    assert load_suite(suite, data_dir=tmp_path / "data")[2] == tmp_path / "data"
    assert load_groups(suite) == {}


def test_groups_must_name_suite_tasks(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ntasks:\n  - {name: a}\ngroups:\n  g: [a, typo]\n")
    with pytest.raises(ValueError, match="typo"):
        load_suite(suite)


def _suite_elsewhere(tmp_path):
    """A suite file in its own folder, so tasks are found only through data_dir."""
    suite = tmp_path / "suites" / "mini.yaml"
    suite.parent.mkdir()
    suite.write_text(
        "name: mini\n"
        "tasks:\n"
        "  - {name: colours, main_metric: mean_per_class_recall}\n"
        "  - {name: captions, type: retrieval}\n"
        "  - {name: not_downloaded}\n"
        "groups:\n"
        "  present: [colours, captions]\n"
        "  partial: [colours, not_downloaded]\n"
    )
    return suite


def test_missing_tasks_make_the_suite_incomplete(model, classification_task, retrieval_task, tmp_path):
    suite = _suite_elsewhere(tmp_path)
    result = evaluate_suite(model, suite, progress=False, data_dir=tmp_path)
    assert [task.name for task in result.tasks] == ["colours", "captions"]
    assert result.missing == ["not_downloaded"] and not result.complete
    assert result.n_expected == 3
    colours = (2 / 3 + 2 / 3 + 1 + 1) / 4  # mean per-class recall, see test_eval_runner
    captions = 3 / 4  # mean_recall@1
    assert result.average == pytest.approx((colours + captions) / 2)
    averages = result.group_averages()
    assert averages["present"] == pytest.approx((colours + captions) / 2)
    assert averages["partial"] is None


def test_a_subset_run_is_not_complete(model, classification_task, tmp_path):
    suite = _suite_elsewhere(tmp_path)
    result = evaluate_suite(model, suite, progress=False, data_dir=tmp_path, only=["colours"])
    assert result.missing == [] and not result.complete and result.n_expected == 3


def test_without_data_dir_tasks_beside_the_suite_are_missing(model, classification_task, tmp_path):
    result = evaluate_suite(model, _suite_elsewhere(tmp_path), progress=False)
    assert result.tasks == [] and len(result.missing) == 3 and result.average is None


def test_average_precision_by_hand():
    image_emb = torch.tensor([[0.9, 0.1], [0.8, 0.5], [0.7, 0.3], [0.6, 0.2]])
    class_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: its positive ranks 3rd -> 1/3;
    # class 2 has no positive and is left out of the mean.
    assert multilabel_metrics(image_emb, class_emb, targets)["mAP"] == pytest.approx((5 / 6 + 1 / 3) / 2)


def test_average_precision_counts_ties_against_the_model():
    one_positive = torch.tensor([False, True, False, False])
    assert average_precision(torch.zeros(4), one_positive) == pytest.approx(1 / 4)


def test_multilabel_chance_is_the_mean_ap_over_all_orderings():
    n, positives = 5, 2
    orderings = list(itertools.permutations(range(n)))
    labels = torch.tensor([True] * positives + [False] * (n - positives))
    expected = sum(average_precision(-torch.tensor(order, dtype=torch.float), labels) for order in orderings)
    expected /= len(orderings)
    chance = chance_levels(MULTILABEL, n, positives_per_class=[positives, 0])
    assert chance["mAP"] == pytest.approx(expected)


def test_multilabel_task_end_to_end(model, make_task, encode_image):
    # Yellow carries red and green; the colour model ranks every positive first: mAP = 1.
    samples = [
        {"png": encode_image("red"), "cls": "0"},
        {"png": encode_image("green"), "cls": "1"},
        {"png": encode_image("yellow"), "cls": "0,1"},
        {"png": encode_image("blue"), "cls": "2"},
        {"png": encode_image("blue"), "cls": "7"},  # out of range: skipped, counted
    ]
    task = make_task("multi", samples, classnames=["red", "green", "blue"], dataset_type="multilabel")
    stats = SampleStats()
    assert [target for _, target, _ in iter_task_samples(task, stats=stats)] == [[0], [1], [0, 1], [2]]
    assert stats.skipped == {"cls out of range": 1}
    result = evaluate_task(model, task, TaskSpec("multi", MULTILABEL, "mAP"), progress=False)
    assert result.metrics == {"mAP": pytest.approx(1.0)}
    # Yellow counts for red and for green.
    assert result.chance == chance_levels(MULTILABEL, 4, positives_per_class=[2, 2, 1])


def _image_folder(tmp_path, encode_image, classnames=("red", "green")):
    task = tmp_path / "folder_task"
    for folder, colour in (("a_red", "red"), ("b_green", "green")):
        (task / "test" / folder).mkdir(parents=True)
        (task / "test" / folder / "1.png").write_bytes(encode_image(colour))
        (task / "test" / folder / "2.jpg").write_bytes(encode_image(colour, "JPEG"))
    (task / "test" / "a_red" / "notes.txt").write_text("not an image")
    (task / "classnames.txt").write_text("\n".join(classnames) + "\n")
    return task


def test_image_folder_task(model, tmp_path, encode_image):
    task = _image_folder(tmp_path, encode_image)
    samples = list(iter_task_samples(task))
    assert [(target, key) for _, target, key in samples] == [
        (0, "a_red/1"),
        (0, "a_red/2"),
        (1, "b_green/1"),
        (1, "b_green/2"),
    ]
    result = evaluate_task(model, task, TaskSpec("folder_task", CLASSIFICATION, "acc1"), progress=False)
    assert result.metrics["acc1"] == 1.0 and result.n_samples == 4


def test_image_folder_needs_one_name_per_folder(tmp_path, encode_image):
    task = _image_folder(tmp_path, encode_image, classnames=("red",))
    with pytest.raises(ValueError, match="class folders"):
        list(iter_task_samples(task))


def _npy(*values) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(values, dtype=np.int64))
    return buffer.getvalue()


def test_worst_group_task_end_to_end(model, make_task, encode_image, tmp_path):
    """A DataComp-style fairness task: metadata [region, year] in each sample's npy. Region 0 is
    all right; region 1 holds the two mislabelled images and one right one; a sample without npy
    and one with a broken npy are skipped and counted."""
    samples = [
        {"png": encode_image("red"), "cls": 0, "npy": _npy(0, 2016)},
        {"png": encode_image("green"), "cls": 1, "npy": _npy(0, 2017)},
        {"png": encode_image("blue"), "cls": 2, "npy": _npy(1, 2016)},
        {"png": encode_image("blue"), "cls": 0, "npy": _npy(1, 2016)},  # wrong label
        {"png": encode_image("yellow"), "cls": 1, "npy": _npy(1, 2017)},  # wrong label
        {"png": encode_image("yellow"), "cls": 3},  # no metadata
        {"png": encode_image("red"), "cls": 0, "npy": b"not numpy"},  # broken metadata
    ]
    make_task("regions", samples, classnames=["red", "green", "blue", "yellow"], nshards=2)
    (tmp_path / "suite.yaml").write_text(
        "name: s\ntasks:\n  - {name: regions, main_metric: acc1_worst_group, group_by: 0}\n"
    )
    for workers in (0, 2):
        result = evaluate_suite(model, tmp_path / "suite.yaml", progress=False, workers=workers).tasks[0]
        assert result.n_samples == 5 and result.skipped_reasons == {"missing npy": 1, "invalid npy": 1}
        assert result.metrics["acc1_group_0"] == 1.0 and result.metrics["acc1_group_1"] == pytest.approx(1 / 3)
        assert result.main_value == pytest.approx(1 / 3) == result.metrics["acc1_worst_group"]
        assert result.metrics["acc1"] == pytest.approx(3 / 5)
        assert result.chance["acc1_worst_group"] == result.chance["acc1_group_1"] == 0.25
    (tmp_path / "suite.yaml").write_text(
        "name: s\ntasks:\n  - {name: regions, main_metric: acc1_worst_group, group_by: 2}\n"
    )
    with pytest.raises(ValueError, match="no usable samples .*'npy has no column 2': 5"):
        evaluate_suite(model, tmp_path / "suite.yaml", progress=False)


def test_datacomp_tasks_are_found_under_datacomp_download_names(model, make_task, encode_image, tmp_path):
    """DataComp's download_evalsets.py writes wds_<task>_test, and wds_dollar_street_test for
    Dollar Street: the built-in suite finds both spellings."""
    samples = [
        {"png": encode_image("red"), "cls": 0, "npy": _npy(3)},
        {"png": encode_image("green"), "cls": 1, "npy": _npy(4)},
    ]
    make_task("wds_imagenet1k_test", samples, classnames=["red", "green"])
    make_task("wds_dollar_street_test", samples, classnames=["red", "green"])
    result = evaluate_suite(
        model,
        "datacomp",
        data_dir=tmp_path,
        progress=False,
        only=["wds_imagenet1k", "wds_fairness-dollar_street", "wds_fairness-geode"],
    )
    assert [t.name for t in result.tasks] == ["wds_imagenet1k", "wds_fairness-dollar_street"]
    assert result.missing == ["wds_fairness-geode"]
    assert result.tasks[1].main_metric == "acc5_worst_group" and result.tasks[1].main_value == 1.0
