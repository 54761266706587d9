"""Zero-shot classification, multilabel and retrieval metrics, with CLIP_benchmark's definitions.

Every metric here is one question asked per query: how many wrong candidates score at least as
high as the best right one? A query is a hit at k when fewer than k do. Counting ties against the
model keeps a degenerate model (all embeddings equal) at zero rather than at a flattering 100%.
Inputs are L2-normalised rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from latentspace.eval.tasks import CLASSIFICATION, MULTILABEL, RETRIEVAL

RECALL_KS = (1, 5, 10)
_CHUNK = 1024  # query rows scored at once: bounds memory to _CHUNK x candidates


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
        positive = query_ids[start : start + _CHUNK, None] == candidate_ids[None, :]
        counts.append(_count_negatives_above_best(scores, positive))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)


def negatives_above_best_relevant(
    queries: torch.Tensor, candidates: torch.Tensor, relevant: Sequence[Sequence[int]]
) -> torch.Tensor:
    """As `negatives_above_best_positive`, with each query's matching candidates given as a list of
    candidate indices: a query may match several candidates and a candidate several queries (a
    definition and its synonyms, a word shared by two definitions), which ids cannot express."""
    counts = []
    for start in range(0, len(queries), _CHUNK):
        scores = queries[start : start + _CHUNK] @ candidates.T
        positive = torch.zeros_like(scores, dtype=torch.bool)
        for row, indices in enumerate(relevant[start : start + _CHUNK]):
            positive[row, list(indices)] = True
        counts.append(_count_negatives_above_best(scores, positive))
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)


def _count_negatives_above_best(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per row of (queries x candidates) `scores`: how many candidates not marked in the boolean
    `positive` score >= the row's best positive one (every candidate, for a row without one)."""
    if not torch.isfinite(scores).all():
        # NaN compares False with everything and would silently count as a hit.
        raise ValueError("non-finite similarity scores: the model produced NaN/inf embeddings")
    best_positive = scores.masked_fill(~positive, -math.inf).max(dim=1, keepdim=True).values
    return ((scores >= best_positive) & ~positive).sum(dim=1)


def zeroshot_metrics(
    image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None
) -> dict[str, float]:
    """acc1, acc5 (top-5 among all classes when there are fewer) and mean per-class recall.

    Mean per-class recall averages top-1 accuracy over the classes present in `labels`
    (sklearn's balanced accuracy, as CLIP_benchmark reports it), so rare classes count as much
    as common ones.

    `groups` (one integer per image: a region, an income bracket) adds acc1 and acc5 within each
    group present (`acc1_group_<g>`, `acc5_group_<g>`) and the worst of them (`acc1_worst_group`,
    `acc5_worst_group`), as WILDS' group evaluation does: DataComp ranks FMoW and GeoDE by the
    worst region's top-1 and Dollar Street by the worst income group's top-5.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    rank = negatives_above_best_positive(image_emb, class_emb, labels, torch.arange(len(class_emb)))
    correct = (rank < 1).float()
    present = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in present])
    predicted = (image_emb @ class_emb.T).argmax(dim=1)
    metrics = {
        "acc1": correct.mean().item(),
        "acc5": (rank < 5).float().mean().item(),
        "mean_per_class_recall": per_class.mean().item(),
        "f1_macro": f1_macro(predicted, labels),
    }
    if groups is not None:
        metrics |= _group_accuracies(rank, torch.as_tensor(groups, dtype=torch.long))
    return metrics


def _group_accuracies(rank: torch.Tensor, groups: torch.Tensor) -> dict[str, float]:
    if len(groups) != len(rank):
        raise ValueError(f"{len(groups)} group ids for {len(rank)} images")
    out: dict[str, float] = {}
    for k in (1, 5):
        per_group = {int(g): (rank[groups == g] < k).float().mean().item() for g in groups.unique()}
        out[f"acc{k}_worst_group"] = min(per_group.values())
        out |= {f"acc{k}_group_{g}": value for g, value in per_group.items()}
    return out


def f1_macro(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean F1 over every class that is a label or a prediction (sklearn's average='macro'), the
    score WILDS and DataComp rank iWildCam by."""
    classes = torch.cat([labels, predicted]).unique()
    scores = []
    for c in classes:
        tp = ((predicted == c) & (labels == c)).sum().item()
        denominator = (predicted == c).sum().item() + (labels == c).sum().item()
        scores.append(2 * tp / denominator)
    return float(sum(scores) / len(scores))


def f1_macro_chance(labels: Sequence[int], n_classes: int) -> float:
    """Expected macro F1 of uniformly random predictions (to first order, many samples): every
    class gets predicted, and class c with n_c of N labels scores 2 n_c / (N + C n_c)."""
    n = len(labels)
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes).tolist()
    return sum(2 * c / (n + n_classes * c) for c in counts) / n_classes


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor) -> dict[str, float]:
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
    metrics["mean_recall@1"] = (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"]) / 2
    return metrics


def multilabel_metrics(image_emb: torch.Tensor, class_emb: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """mAP: average precision per class (images ranked by similarity to the class), then the mean.

    `targets` is an (N images, C classes) 0/1 matrix. Classes with no positive image are left
    out of the mean (their AP is undefined), as sklearn and CLIP_benchmark do. Ties count
    against the model, like every metric here: a positive's precision is taken after all
    images scoring at least as high, so constant embeddings score the prevalence, not 100%.
    """
    targets = torch.as_tensor(targets).bool()
    scores = image_emb @ class_emb.T
    if not torch.isfinite(scores).all():
        raise ValueError("non-finite similarity scores: the model produced NaN/inf embeddings")
    per_class = [average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1]) if targets[:, c].any()]
    if not per_class:
        raise ValueError("multilabel task with no positive label at all")
    return {"mAP": sum(per_class) / len(per_class)}


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Mean over positives of precision among all items scoring >= that positive (ties pessimistic)."""
    at_or_above = scores[None, :] >= scores[positive][:, None]  # (P, N)
    n_above = at_or_above.sum(dim=1).float()
    positives_above = (at_or_above & positive[None, :]).sum(dim=1).float()
    return (positives_above / n_above).mean().item()


def chance_levels(
    task_type: str,
    n_classes_or_items: int,
    n_texts: int | None = None,
    *,
    positives_per_class: Sequence[int] | None = None,
) -> dict[str, float]:
    """The expected value of each metric for a model that ranks candidates at random.

    Printed beside each score: on small tasks chance is far from zero (5 classes: acc5 = 100%).
    For retrieval, `n_classes_or_items` is the number of images and `n_texts` the number of
    captions (default: one per image); the text-retrieval values are exact when every image has
    the same number of captions, and use the mean caption count otherwise. For multilabel,
    `n_classes_or_items` is the number of images and `positives_per_class` the count of images
    carrying each class.
    """
    if task_type == CLASSIFICATION:
        return _classification_chance(n_classes_or_items)
    if task_type == RETRIEVAL:
        return _retrieval_chance(n_classes_or_items, n_texts or n_classes_or_items)
    if task_type == MULTILABEL:
        if positives_per_class is None:
            raise ValueError("multilabel chance needs positives_per_class")
        return _multilabel_chance(n_classes_or_items, positives_per_class)
    raise ValueError(f"unknown task type {task_type!r}")


def _multilabel_chance(n_images: int, positives_per_class: Sequence[int]) -> dict[str, float]:
    """Expected mAP of a random ranking: about the mean class prevalence (a bit above it when small).

    For P positives among N items in random order, E[AP] = (H_N + (P-1)/(N-1) * (N - H_N)) / N,
    H_N the N-th harmonic number (each position r holds a positive with probability P/N, and then
    has on average (r-1)(P-1)/(N-1) other positives above it).
    """
    present = [p for p in positives_per_class if p > 0]
    if not present:
        raise ValueError("multilabel task with no positive label at all")
    return {"mAP": sum(_expected_ap(n_images, p) for p in present) / len(present)}


def _expected_ap(n: int, p: int) -> float:
    if n == 1:
        return 1.0
    harmonic = sum(1 / r for r in range(1, n + 1))
    return (harmonic + (p - 1) / (n - 1) * (n - harmonic)) / n


def _classification_chance(n_classes: int) -> dict[str, float]:
    return {
        "acc1": 1 / n_classes,
        "acc5": min(5, n_classes) / n_classes,
        "mean_per_class_recall": 1 / n_classes,
        "f1_macro": 1 / n_classes,  # balanced classes; the runner replaces it with the exact value
    }


def _retrieval_chance(n_images: int, n_texts: int) -> dict[str, float]:
    captions_per_image = n_texts / n_images
    chance = {}
    for k in RECALL_KS:
        # A caption query has one right image among n_images.
        chance[f"image_retrieval_recall@{k}"] = min(k, n_images) / n_images
        # An image query misses only if all k top captions are drawn from the wrong ones.
        chance[f"text_retrieval_recall@{k}"] = 1 - miss_probability(n_texts, captions_per_image, k)
    chance["mean_recall@1"] = (chance["image_retrieval_recall@1"] + chance["text_retrieval_recall@1"]) / 2
    return chance


def miss_probability(n_candidates: int, n_right: float, k: int) -> float:
    """P(k draws without replacement from n_candidates all miss the n_right ones)."""
    p = 1.0
    for i in range(min(k, n_candidates)):
        p *= max(0.0, (n_candidates - n_right - i) / (n_candidates - i))
    return p
