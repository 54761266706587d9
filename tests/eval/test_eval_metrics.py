"""Metrics against hand computations on tiny score matrices, and chance levels."""

from __future__ import annotations

import math

import pytest
import torch

from latentspace.eval.metrics import chance_levels, retrieval_metrics, zeroshot_metrics
from latentspace.eval.tasks import CLASSIFICATION, GROUP_METRICS, METRIC_NAMES, RETRIEVAL


def test_zeroshot_metrics_by_hand():
    # With class_emb = I, the image rows ARE the scores against the 6 classes.
    class_emb = torch.eye(6)
    image_emb = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0, ranked 1st: top-1 and top-5 hit
            [0.5, 0.3, 0.6, 0.0, 0.0, 0.0],  # label 1, ranked 3rd: top-5 hit only
            [0.5, 0.4, 0.0, 0.3, 0.2, 0.1],  # label 2, ranked 6th: miss
            [0.4, 0.5, 0.0, 0.0, 0.0, 0.0],  # label 0, ranked 2nd: top-5 hit only
        ]
    )
    metrics = zeroshot_metrics(image_emb, class_emb, torch.tensor([0, 1, 2, 0]))
    assert metrics["acc1"] == pytest.approx(1 / 4)
    assert metrics["acc5"] == pytest.approx(3 / 4)
    # per-class top-1 recall: class 0 -> 1/2, class 1 -> 0, class 2 -> 0; classes 3-5 absent.
    assert metrics["mean_per_class_recall"] == pytest.approx((1 / 2 + 0 + 0) / 3)


def test_mean_per_class_recall_weights_classes_not_samples():
    # 3 easy samples of class 0, 1 hard sample of class 1: acc1 3/4, per-class (1 + 0)/2.
    image_emb = torch.tensor([[1.0, 0.0]] * 4)
    metrics = zeroshot_metrics(image_emb, torch.eye(2), torch.tensor([0, 0, 0, 1]))
    assert metrics["acc1"] == pytest.approx(3 / 4)
    assert metrics["mean_per_class_recall"] == pytest.approx(1 / 2)


def test_acc5_is_capped_at_the_number_of_classes():
    image_emb = torch.tensor([[0.0, 0.1, 0.9], [0.9, 0.1, 0.0]])
    metrics = zeroshot_metrics(image_emb, torch.eye(3), torch.tensor([0, 2]))
    assert metrics["acc1"] == 0.0
    assert metrics["acc5"] == 1.0


def test_ties_count_against_the_model():
    # A model that embeds everything identically must not score 100%.
    image_emb = torch.ones(4, 3)
    class_emb = torch.ones(3, 3)
    metrics = zeroshot_metrics(image_emb, class_emb, torch.tensor([0, 1, 2, 0]))
    assert metrics["acc1"] == 0.0
    retrieval = retrieval_metrics(torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 0, 1, 1]))
    assert retrieval["mean_recall@1"] == 0.0


def test_nan_embeddings_raise_instead_of_scoring():
    image_emb = torch.tensor([[math.nan, 0.0]])
    with pytest.raises(ValueError, match="non-finite"):
        zeroshot_metrics(image_emb, torch.eye(2), torch.tensor([0]))


def test_retrieval_metrics_by_hand_with_two_captions_per_image():
    # With image_emb = I, text row t holds caption t's scores against images 0, 1, 2.
    image_emb = torch.eye(3)
    text_emb = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # caption of image 0: its image ranked 1st
            [0.2, 0.5, 0.1],  # caption of image 0: 2nd
            [0.1, 0.8, 0.3],  # caption of image 1: 1st
            [0.7, 0.6, 0.65],  # caption of image 1: 3rd
            [0.3, 0.2, 0.4],  # caption of image 2: 1st
            [0.5, 0.6, 0.1],  # caption of image 2: 3rd
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image)
    # Caption queries: 3 of 6 find their image first; all within the top 5 (only 3 images).
    assert metrics["image_retrieval_recall@1"] == pytest.approx(3 / 6)
    assert metrics["image_retrieval_recall@5"] == 1.0
    assert metrics["image_retrieval_recall@10"] == 1.0
    # Image queries score the columns. Image 0: caption 0 (0.9) is the top text -> hit.
    # Image 1: caption 2 (0.8) is top; its other caption (0.6) is not, but ANY caption counts.
    # Image 2: best own caption 0.4 is beaten by caption 3 (0.65) -> miss at 1, hit at 5.
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@5"] == 1.0
    assert metrics["mean_recall@1"] == pytest.approx((3 / 6 + 2 / 3) / 2)


def test_chance_levels_classification():
    assert chance_levels(CLASSIFICATION, 10) == pytest.approx(
        {"acc1": 0.1, "acc5": 0.5, "mean_per_class_recall": 0.1, "f1_macro": 0.1}
    )
    assert chance_levels(CLASSIFICATION, 3)["acc5"] == 1.0


def test_chance_levels_retrieval():
    chance = chance_levels(RETRIEVAL, 4, n_texts=8)  # 2 captions per image
    assert chance["image_retrieval_recall@1"] == pytest.approx(1 / 4)
    assert chance["image_retrieval_recall@5"] == 1.0
    assert chance["text_retrieval_recall@1"] == pytest.approx(2 / 8)
    # Misses at 5 only if all 5 drawn captions come from the 6 wrong ones: C(6,5) / C(8,5).
    assert chance["text_retrieval_recall@5"] == pytest.approx(1 - math.comb(6, 5) / math.comb(8, 5))
    assert chance["text_retrieval_recall@10"] == 1.0
    assert chance["mean_recall@1"] == pytest.approx((1 / 4 + 2 / 8) / 2)
    assert chance_levels(RETRIEVAL, 5) == chance_levels(RETRIEVAL, 5, n_texts=5)


def test_chance_levels_match_a_random_model():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 20, (4000,), generator=generator)
    images, classes = torch.randn(4000, 64, generator=generator), torch.randn(20, 64, generator=generator)
    random = zeroshot_metrics(images, classes, labels)
    for key, expected in chance_levels(CLASSIFICATION, 20).items():
        assert random[key] == pytest.approx(expected, abs=0.03)
    text_to_image = torch.arange(300).repeat_interleave(2)
    images, texts = torch.randn(300, 64, generator=generator), torch.randn(600, 64, generator=generator)
    random = retrieval_metrics(images, texts, text_to_image)
    for key, expected in chance_levels(RETRIEVAL, 300, n_texts=600).items():
        assert random[key] == pytest.approx(expected, abs=0.03)


def test_chance_and_metrics_share_keys():
    ungrouped = set(METRIC_NAMES[CLASSIFICATION]) - set(GROUP_METRICS)
    assert set(chance_levels(CLASSIFICATION, 4)) == ungrouped
    assert set(chance_levels(RETRIEVAL, 4)) == set(METRIC_NAMES[RETRIEVAL])
    two = torch.eye(2), torch.eye(2), torch.tensor([0, 1])
    assert set(zeroshot_metrics(*two)) == ungrouped
    assert set(zeroshot_metrics(*two, groups=torch.tensor([7, 7]))) == set(METRIC_NAMES[CLASSIFICATION]) | {
        "acc1_group_7",
        "acc5_group_7",
    }
    assert set(retrieval_metrics(*two)) == set(METRIC_NAMES[RETRIEVAL])


def test_worst_group_accuracy_by_hand():
    """Six images of 6 classes (one-hot), three groups. Group 0: both right; group 1: one of two
    right at top-1, both within top-5 (a near miss); group 2: one image, wrong even at top-5."""
    classes = torch.eye(6)
    images = torch.eye(6)
    images[3] = torch.nn.functional.normalize(torch.tensor([0.0, 0, 0, 0.5, 1, 0]), dim=0)  # 4 beats 3
    images[5] = torch.nn.functional.normalize(torch.tensor([1.0, 1, 1, 1, 1, 0.1]), dim=0)  # 5 ranks last
    labels = torch.arange(6)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    groups[4] = 0  # group 0: images 0, 1, 4 (all right); group 1: 2 (right), 3 (near miss); group 2: 5
    m = zeroshot_metrics(images, classes, labels, groups)
    assert m["acc1"] == pytest.approx(4 / 6)
    assert (m["acc1_group_0"], m["acc1_group_1"], m["acc1_group_2"]) == (1.0, 0.5, 0.0)
    assert (m["acc5_group_0"], m["acc5_group_1"], m["acc5_group_2"]) == (1.0, 1.0, 0.0)
    assert m["acc1_worst_group"] == 0.0 and m["acc5_worst_group"] == 0.0
    # without the hopeless image, the worst group is group 1
    keep = torch.arange(5)
    m = zeroshot_metrics(images[keep], classes, labels[keep], groups[keep])
    assert m["acc1_worst_group"] == 0.5 and m["acc5_worst_group"] == 1.0
    with pytest.raises(ValueError, match="group ids"):
        zeroshot_metrics(images, classes, labels, groups[:3])


def test_queries_are_scored_in_chunks_without_changing_results(monkeypatch):
    import latentspace.eval.metrics as metrics_module

    generator = torch.Generator().manual_seed(1)
    image_emb, class_emb = torch.randn(50, 8, generator=generator), torch.randn(7, 8, generator=generator)
    labels = torch.randint(0, 7, (50,), generator=generator)
    whole = zeroshot_metrics(image_emb, class_emb, labels)
    monkeypatch.setattr(metrics_module, "_CHUNK", 6)
    assert zeroshot_metrics(image_emb, class_emb, labels) == whole


def test_f1_macro_by_hand_and_its_chance():
    from latentspace.eval.metrics import f1_macro, f1_macro_chance

    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 3])  # class 3 is predicted but never a label
    # class 0: tp 2, 2 predicted, 3 true -> 4/5; class 1: tp 1, 2 and 2 -> 1/2; class 2: 0; class 3: 0
    assert f1_macro(predicted, labels) == pytest.approx((4 / 5 + 1 / 2) / 4)
    assert f1_macro_chance([0, 1, 2, 3], 4) == pytest.approx(1 / 4)  # balanced: 1/C
    imbalanced = f1_macro_chance([0] * 90 + [1] * 10, 2)
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 9000 + [1] * 1000)
    simulated = f1_macro(torch.randint(0, 2, (10000,), generator=generator), labels)
    assert simulated == pytest.approx(imbalanced, abs=0.01)
