"""Running tasks and suites with a fake model whose scores are known by construction."""

from __future__ import annotations

import pytest
import torch

from latentspace.eval.runner import class_embeddings, evaluate_suite, evaluate_task
from latentspace.eval.tasks import CLASSIFICATION, RETRIEVAL, TaskSpec


def test_class_embeddings_average_templates_and_renormalise(model):
    templates = ["a photo of {c}.", "{c} art", "the colour {c}"]
    emb = class_embeddings(model, ["red", "blue"], templates, batch_size=4)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    prompts = [text for texts, _ in model.text_calls for text in texts]
    assert prompts[:3] == ["a photo of red.", "red art", "the colour red"]
    assert len(prompts) == 6 and [len(texts) for texts, _ in model.text_calls] == [4, 2]
    assert {task_type for _, task_type in model.text_calls} == {"search_query"}
    assert emb[0] @ emb[1] < 0.1  # red and blue stay apart


def test_classification_accuracy_is_known_by_construction(model, classification_task):
    spec = TaskSpec("colours", CLASSIFICATION, "acc1")
    result = evaluate_task(model, classification_task, spec, batch_size=3, progress=False)
    assert result.n_samples == 8 and result.n_skipped == 0
    assert result.metrics["acc1"] == pytest.approx(6 / 8)  # the two mislabelled images miss
    assert result.metrics["acc5"] == 1.0  # 4 classes
    # Per class: red 2/3 (holds the blue image), green 2/3 (holds the yellow one), blue 1, yellow 1.
    assert result.metrics["mean_per_class_recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    # class sizes 3, 3, 1, 1 of 8: random guessing scores 2c / (8 + 4c) per class in macro F1
    assert result.chance == pytest.approx(
        {"acc1": 0.25, "acc5": 1.0, "mean_per_class_recall": 0.25, "f1_macro": (0.3 + 0.3 + 1 / 6 + 1 / 6) / 4}
    )
    assert 0 < result.metrics["f1_macro"] <= 1
    assert result.main_value == result.metrics["acc1"]
    assert model.image_batch_sizes == [3, 3, 2]  # streamed in batches of batch_size


def test_retrieval_recalls_are_known_by_construction(model, retrieval_task):
    spec = TaskSpec("captions", RETRIEVAL, "mean_recall@1")
    result = evaluate_task(model, retrieval_task, spec, progress=False)
    # The yellow image's two captions say "cyan": they rank the green and blue images above it,
    # and the yellow image ranks the red and green captions (4 texts) above them.
    assert result.metrics["image_retrieval_recall@1"] == pytest.approx(6 / 8)
    assert result.metrics["image_retrieval_recall@5"] == 1.0
    assert result.metrics["text_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert result.metrics["text_retrieval_recall@5"] == 1.0
    assert result.metrics["mean_recall@1"] == pytest.approx(3 / 4)
    assert result.chance["image_retrieval_recall@1"] == pytest.approx(1 / 4)
    assert result.n_samples == 4


def test_corrupt_samples_are_reported_in_the_result(model, make_task, encode_image):
    task = make_task(
        "noisy",
        [
            {"png": encode_image("red"), "cls": 0},
            {"png": b"\x89PNG not really", "cls": 1},
            {"png": encode_image("green"), "cls": 1},
        ],
        classnames=["red", "green"],
    )
    result = evaluate_task(model, task, TaskSpec("noisy", CLASSIFICATION, "acc1"), progress=False)
    assert result.n_samples == 2 and result.n_skipped == 1
    assert result.skipped_reasons == {"undecodable image": 1}
    assert result.metrics["acc1"] == 1.0


def test_task_with_no_usable_samples_raises(model, make_task):
    task = make_task("empty", [{"png": b"junk", "cls": 0}], classnames=["red"])
    with pytest.raises(ValueError, match="no usable samples"):
        evaluate_task(model, task, TaskSpec("empty", CLASSIFICATION, "acc1"), progress=False)


def test_suite_type_must_match_the_task_directory(model, retrieval_task):
    with pytest.raises(ValueError, match="retrieval"):
        evaluate_task(model, retrieval_task, TaskSpec("captions", CLASSIFICATION, "acc1"), progress=False)


def _write_suite(root, *names_and_types):
    lines = ["name: colours-suite", "tasks:"]
    lines += [f"  - {{name: {name}, type: {task_type}}}" for name, task_type in names_and_types]
    path = root / "suite.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_suite_lists_missing_tasks_and_averages_the_rest(model, tmp_path, classification_task, retrieval_task):
    suite = _write_suite(
        tmp_path,
        ("colours", "zeroshot_classification"),
        ("not_downloaded", "retrieval"),
        ("captions", "retrieval"),
    )
    result = evaluate_suite(model, suite, batch_size=4, progress=True)  # exercises the progress bar
    assert (result.model, result.space, result.suite) == (model.name, model.space, "colours-suite")
    assert [task.name for task in result.tasks] == ["colours", "captions"]
    assert result.missing == ["not_downloaded"]
    assert result.average == pytest.approx((6 / 8 + 3 / 4) / 2)


def test_suite_only_runs_the_named_tasks(model, tmp_path, classification_task, retrieval_task):
    suite = _write_suite(tmp_path, ("colours", "zeroshot_classification"), ("captions", "retrieval"))
    result = evaluate_suite(model, suite, progress=False, only=["captions"])
    assert [task.name for task in result.tasks] == ["captions"]
    with pytest.raises(ValueError, match="typo"):
        evaluate_suite(model, suite, progress=False, only=["typo"])


def test_a_suite_embeds_an_image_that_an_earlier_task_embedded_only_once(model, tmp_path, make_task, encode_image):
    classnames = ["red", "green", "blue", "yellow"]
    samples = [{"png": encode_image(colour), "cls": i} for i, colour in enumerate(classnames)]
    samples += [{"jpg": encode_image("blue", "JPEG"), "cls": 2}, {"png": encode_image("red"), "cls": 0}]
    make_task("colours", samples, classnames=classnames)  # 6 samples, 5 distinct images
    make_task("colours_again", samples, classnames=classnames)  # the same pixels
    bigger_red = {"png": encode_image("red", size=16), "cls": 0}  # other pixels, same class
    make_task("colours_plus_one", samples + [bigger_red], classnames=classnames)
    suite = _write_suite(
        tmp_path,
        ("colours", "zeroshot_classification"),
        ("colours_again", "zeroshot_classification"),
        ("colours_plus_one", "zeroshot_classification"),
    )
    result = evaluate_suite(model, suite, batch_size=4, progress=False)
    # The repeated red PNG is embedded once; later tasks embed only what is new (the bigger red).
    assert sum(model.image_batch_sizes) == 5 + 1
    first, again, plus_one = result.tasks
    assert first.metrics == again.metrics and first.n_samples == again.n_samples == 6
    assert plus_one.n_samples == 7
    # Alone, a task scores the same as within the suite.
    alone = evaluate_suite(type(model)(), suite, batch_size=4, progress=False, only=["colours_plus_one"])
    assert alone.tasks[0].metrics == pytest.approx(plus_one.metrics)
