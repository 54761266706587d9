"""Zero-shot classification and retrieval metrics, with CLIP_benchmark's definitions.

Every metric here is one question asked per query: how many wrong candidates score at least as
high as the best right one? A query is a hit at k when fewer than k do. Counting ties against the
model keeps a degenerate model (all embeddings equal) at zero rather than at a flattering 100%.
Inputs are L2-normalised rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import math

import torch

from latentspace.eval.tasks import CLASSIFICATION, RETRIEVAL

RECALL_KS = (1, 5, 10)
_CHUNK = 1024  # query rows scored at once: bounds memory to CHUNK x candidates


def negatives_above_best_positive(
    queries: torch.Tensor, candidates: torch.Tensor, query_ids: torch.Tensor, candidate_ids: torch.Tensor
) -> torch.Tensor:
    """Per query, the number of non-matching candidates scoring >= its best matching one.

    A candidate matches a query when their ids are equal (a class index, or an image index shared
    by an image and its captions). A query with no match counts every candidate as above it.
    """
    counts = []
    for start in range(0, len(queries), _CHUNK):
        scores = queries[start : start + _CHUNK] @ candidates.T
        if not torch.isfinite(scores).all():
            # NaN compares False with everything and would silently count as a hit.
            raise ValueError("non-finite similarity scores: the model produced NaN/inf embeddings")
        positive = query_ids[start : start + _CHUNK, None] == candidate_ids[None, :]
        best_positive = scores.masked_fill(~positive, -math.inf).max(dim=1, keepdim=True).values
        counts.append(((scores >= best_positive) & ~positive).sum(dim=1))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)


def zeroshot_metrics(
    image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """acc1, acc5 (top-5 among all classes when there are fewer) and mean per-class recall.

    Mean per-class recall averages top-1 accuracy over the classes present in `labels`
    (sklearn's balanced accuracy, as CLIP_benchmark reports it), so rare classes count as much
    as common ones.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    rank = negatives_above_best_positive(image_emb, class_emb, labels, torch.arange(len(class_emb)))
    correct = (rank < 1).float()
    present = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in present])
    return {
        "acc1": correct.mean().item(),
        "acc5": (rank < 5).float().mean().item(),
        "mean_per_class_recall": per_class.mean().item(),
    }


def retrieval_metrics(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor
) -> dict[str, float]:
    """Recall@{1,5,10} both ways, plus mean_recall@1 (DataComp's retrieval score).

    As in CLIP_benchmark: image_retrieval_recall@k asks, for each caption, whether its image is
    in the top k images; text_retrieval_recall@k asks, for each image, whether ANY of its
    captions is in the top k captions.
    """
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    image_ids = torch.arange(len(image_emb))
    text_rank = negatives_above_best_positive(text_emb, image_emb, text_to_image, image_ids)
    image_rank = negatives_above_best_positive(image_emb, text_emb, image_ids, text_to_image)
    metrics = {}
    for k in RECALL_KS:
        metrics[f"image_retrieval_recall@{k}"] = (text_rank < k).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (image_rank < k).float().mean().item()
    metrics["mean_recall@1"] = (
        metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]
    ) / 2
    return metrics


def chance_levels(task_type: str, n_classes_or_items: int, n_texts: int | None = None) -> dict[str, float]:
    """The expected value of each metric for a model that ranks candidates at random.

    Printed beside each score: on small tasks chance is far from zero (5 classes: acc5 = 100%).
    For retrieval, `n_classes_or_items` is the number of images and `n_texts` the number of
    captions (default: one per image); the text-retrieval values are exact when every image has
    the same number of captions, and use the mean caption count otherwise.
    """
    if task_type == CLASSIFICATION:
        return _classification_chance(n_classes_or_items)
    if task_type == RETRIEVAL:
        return _retrieval_chance(n_classes_or_items, n_texts or n_classes_or_items)
    raise ValueError(f"unknown task type {task_type!r}")


def _classification_chance(n_classes: int) -> dict[str, float]:
    return {
        "acc1": 1 / n_classes,
        "acc5": min(5, n_classes) / n_classes,
        "mean_per_class_recall": 1 / n_classes,
    }


def _retrieval_chance(n_images: int, n_texts: int) -> dict[str, float]:
    captions_per_image = n_texts / n_images
    chance = {}
    for k in RECALL_KS:
        # A caption query has one right image among n_images.
        chance[f"image_retrieval_recall@{k}"] = min(k, n_images) / n_images
        # An image query misses only if all k top captions are drawn from the wrong ones.
        chance[f"text_retrieval_recall@{k}"] = 1 - _all_wrong(n_texts, captions_per_image, k)
    chance["mean_recall@1"] = (chance["image_retrieval_recall@1"] + chance["text_retrieval_recall@1"]) / 2
    return chance


def _all_wrong(n_candidates: int, n_right: float, k: int) -> float:
    """P(k draws without replacement from n_candidates all miss the n_right ones)."""
    p = 1.0
    for i in range(min(k, n_candidates)):
        p *= max(0.0, (n_candidates - n_right - i) / (n_candidates - i))
    return p
