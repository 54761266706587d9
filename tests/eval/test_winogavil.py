"""WinoGAViL in its release layout, scored with a fake model whose picks are known by construction."""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from latentspace.eval.runner import evaluate_suite, evaluate_task
from latentspace.eval.tasks import WINOGAVIL, TaskSpec, task_type_of
from latentspace.eval.winogavil import cue_prompt, jaccard, random_jaccard

OTHERS = ["green", "blue", "yellow", "cyan", "magenta"]


def _write(task, rows, images):
    (task / "winogavil_images").mkdir(parents=True)
    for name, data in images.items():
        (task / "winogavil_images" / f"{name}.jpg").write_bytes(data)
    with open(task / "winogavil_dataset.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["cue", "candidates", "associations", "num_associations", "ID"])
        writer.writeheader()
        for i, (cue, candidates, associations) in enumerate(rows):
            writer.writerow(
                {
                    "cue": cue,
                    "candidates": json.dumps(candidates),
                    "associations": json.dumps(associations),
                    "num_associations": len(associations),
                    "ID": i,
                }
            )
    return task


@pytest.fixture
def wino_task(tmp_path, encode_image):
    colours = ["red", "red", *OTHERS, "green", "blue", "cyan"]  # 10 images, two of them red
    images = {f"{c}_{i}": encode_image(c, "JPEG") for i, c in enumerate(colours)}
    images["broken"] = b"\xff\xd8 not a jpeg"
    names = list(images)[:10]
    rows = [
        ("Red", names, ["red_0", "red_1"]),  # both red images: Jaccard 1
        ("red", names, ["red_0", "blue_3"]),  # picks red_0 and a reddish one: 1/3
        ("green", ["green_2", "blue_3", "yellow_4", "cyan_5", "magenta_6"], ["green_2"]),  # 5 candidates: 1
        ("red", names, ["nowhere"]),  # no association among the candidates
        ("red", ["red_0", "missing_9", "blue_3", "cyan_5", "green_2"], ["red_0"]),  # no such image
        ("blue", ["blue_3", "broken", "red_0", "cyan_5", "green_2"], ["blue_3"]),  # undecodable image
    ]
    return _write(tmp_path / "wds_winogavil", rows, images)


def test_picks_and_scores_are_known_by_construction(model, wino_task):
    assert task_type_of(wino_task) == WINOGAVIL
    result = evaluate_task(
        model, wino_task, TaskSpec("wds_winogavil", WINOGAVIL, "jaccard_score_10-12"), batch_size=4, progress=False
    )
    assert result.metrics == pytest.approx(
        {"jaccard_score_10-12": (1 + 1 / 3) / 2, "jaccard_score_5-6": 1.0, "avg_jaccard_score": (1 + 1 / 3 + 1) / 3}
    )
    assert result.chance == pytest.approx(
        {"jaccard_score_10-12": 19 / 135, "jaccard_score_5-6": 1 / 5, "avg_jaccard_score": (2 * 19 / 135 + 1 / 5) / 3}
    )
    assert result.n_samples == 3
    assert result.skipped_reasons == {"invalid row": 1, "missing image": 1, "undecodable image": 1}
    # every distinct decodable image embedded once (10), in batches of at most 4
    assert sum(model.image_batch_sizes) == 10 and max(model.image_batch_sizes) <= 4
    assert {text for texts, _ in model.text_calls for text in texts} == {"A red", "A green"}


def test_the_datacomp_suite_runs_it(model, wino_task):
    result = evaluate_suite(model, "datacomp", data_dir=wino_task.parent, only=["wds_winogavil"], progress=False)
    assert [t.name for t in result.tasks] == ["wds_winogavil"]
    assert result.tasks[0].main_value == pytest.approx(2 / 3)


def test_without_ten_candidate_instances_the_score_is_undefined(model, tmp_path, encode_image):
    images = {c: encode_image(c, "JPEG") for c in ["red", *OTHERS[:4]]}
    task = _write(tmp_path / "small", [("red", list(images), ["red"])], images)
    with pytest.raises(ValueError, match="no instance with 10 or 12 candidates"):
        evaluate_task(model, task, TaskSpec("small", WINOGAVIL, "jaccard_score_10-12"), progress=False)


def test_associations_outside_the_candidates_are_ignored_as_datacomp_does(model, tmp_path, encode_image):
    colours = ["red", *OTHERS, "green", "blue", "cyan", "yellow"]
    images = {f"{c}_{i}": encode_image(c, "JPEG") for i, c in enumerate(colours)}
    task = _write(tmp_path / "w", [("red", list(images), ["red_0", "not_shown"])], images)
    result = evaluate_task(model, task, TaskSpec("w", WINOGAVIL, "jaccard_score_10-12"), progress=False)
    assert result.main_value == 1.0 and result.n_skipped == 0


def test_an_unreadable_csv_is_a_clear_error(model, tmp_path):
    task = tmp_path / "w"
    task.mkdir()
    (task / "winogavil_dataset.csv").write_bytes(b"cue,candidates\n\xff\xfe\x00broken")
    with pytest.raises(ValueError, match="not a readable UTF-8 CSV"):
        evaluate_task(model, task, TaskSpec("w", WINOGAVIL, "jaccard_score_10-12"), progress=False)


def test_helpers():
    assert cue_prompt("Apple") == "An apple" and cue_prompt("pogonophile") == "A pogonophile"
    assert jaccard({"a", "b"}, frozenset({"b", "c"})) == pytest.approx(1 / 3)
    for n, k in [(5, 1), (6, 2), (10, 3), (12, 5)]:  # against every possible pick
        true = frozenset(range(k))
        picks = list(itertools.combinations(range(n), k))
        assert random_jaccard(n, k) == pytest.approx(sum(jaccard(set(p), true) for p in picks) / len(picks))
