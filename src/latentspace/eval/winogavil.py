"""WinoGAViL (Bitton et al. 2022), scored as DataComp scores it.

Each instance is a cue word and 5 to 12 candidate images, of which k associate with the cue. The
model picks the k candidates whose images are closest to the cue's text embedding (prompted
"A {cue}" / "An {cue}", as DataComp prompts it); the instance scores the Jaccard index between
the picked and the true sets. DataComp ranks by the mean over instances with 10 or 12 candidates
(`jaccard_score_10-12`); the mean over 5 or 6 candidates and over all instances are reported too.

On disk, the dataset's own release files (the nlphuji/winogavil dataset repository, images
unzipped):

    <task>/winogavil_dataset.csv          one instance per row; `cue`, and `candidates` and
                                          `associations` as JSON lists of image names
    <task>/winogavil_images/<name>.jpg    one image per candidate name

Every distinct image is decoded and embedded once, batch by batch, however many instances share
it. An instance with a malformed row, or a candidate image that is missing or does not decode, is
skipped and counted; the others are scored.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from latentspace.data.images import ImageDecodeError, decode_image
from latentspace.eval.tasks import DEFAULT_MAIN_METRIC, METRIC_NAMES, WINOGAVIL, WINOGAVIL_CSV, SampleStats

CSV_NAME = WINOGAVIL_CSV
IMAGES_DIR = "winogavil_images"
IMAGE_SUFFIX = ".jpg"
MAIN_METRIC = DEFAULT_MAIN_METRIC[WINOGAVIL]
METRICS = METRIC_NAMES[WINOGAVIL]


@dataclass(frozen=True)
class Instance:
    cue: str
    candidates: tuple[str, ...]
    associations: frozenset[str]


def read_instances(task_dir: Path, stats: SampleStats) -> list[Instance]:
    """Every well-formed row of the CSV; malformed ones are skipped and counted in `stats`."""
    path = Path(task_dir) / CSV_NAME
    if not path.is_file():
        raise FileNotFoundError(f"missing WinoGAViL file: {path}")
    instances = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
                instance = _parse_row(row)
                if instance is None:
                    stats.skip("invalid row", f"{path.name}:{number}")
                else:
                    instances.append(instance)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a readable UTF-8 CSV ({e}); expected the WinoGAViL release file") from None
    return instances


def _parse_row(row: dict) -> Instance | None:
    try:
        cue = (row.get("cue") or "").strip()
        candidates = json.loads(row.get("candidates") or "")
        associations = json.loads(row.get("associations") or "")
    except (json.JSONDecodeError, TypeError):
        return None
    if (
        not cue
        or not isinstance(candidates, list)
        or not isinstance(associations, list)
        or not all(isinstance(c, str) and c for c in candidates)
        or len(set(candidates)) != len(candidates)
    ):
        return None
    # As DataComp marks them (np.isin over the candidates): an association that is not among the
    # candidates cannot be picked and is ignored; a row left with none cannot be scored.
    true = frozenset(associations) & set(candidates)
    if not true:
        return None
    return Instance(cue, tuple(candidates), true)


def cue_prompt(cue: str) -> str:
    """DataComp's prompt for a cue: 'An apple', 'A pogonophile'."""
    cue = cue.lower()
    return f"{'An' if cue[0] in 'aeiou' else 'A'} {cue}"


def size_group(n_candidates: int) -> str | None:
    """DataComp's two instance groups, by number of candidates."""
    if n_candidates <= 6:
        return "jaccard_score_5-6"
    if n_candidates >= 10:
        return "jaccard_score_10-12"
    return None


def jaccard(picked: set[str], true: frozenset[str]) -> float:
    return len(picked & true) / len(picked | true)


def random_jaccard(n_candidates: int, k: int) -> float:
    """Expected Jaccard index of k candidates picked at random out of n, against k true ones:
    the overlap i is hypergeometric, and the index is i / (2k - i)."""
    total = math.comb(n_candidates, k)
    return sum(
        math.comb(k, i) * math.comb(n_candidates - k, k - i) / total * i / (2 * k - i)
        for i in range(max(0, 2 * k - n_candidates), k + 1)
    )


def evaluate(
    task_dir: Path,
    stats: SampleStats,
    *,
    embed_images: Callable[[list[Image.Image]], torch.Tensor],
    embed_texts: Callable[[Sequence[str]], torch.Tensor],
    batch_size: int,
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, chance levels) for the task; embeddings come back as unit rows.

    `stats.n_yielded` counts the instances scored."""
    task_dir = Path(task_dir)
    instances = read_instances(task_dir, stats)
    names = list(dict.fromkeys(name for instance in instances for name in instance.candidates))
    image_emb, unusable = _embed_named_images(task_dir / IMAGES_DIR, names, embed_images, batch_size, advance)
    usable = []
    for instance in instances:
        problem = next((unusable[name] for name in instance.candidates if name in unusable), None)
        if problem is None:
            usable.append(instance)
        else:
            stats.skip(problem, instance.cue)
    if not usable:
        raise ValueError(f"{task_dir.name}: no usable WinoGAViL instances (skipped: {dict(stats.skipped)})")
    stats.n_yielded += len(usable)
    cue_emb = embed_texts([cue_prompt(instance.cue) for instance in usable])

    scores: dict[str, list[float]] = {name: [] for name in METRICS}
    chance: dict[str, list[float]] = {name: [] for name in METRICS}
    for instance, cue in zip(usable, cue_emb):
        candidates = torch.stack([image_emb[name] for name in instance.candidates])
        k = len(instance.associations)
        picked = {instance.candidates[i] for i in torch.topk(candidates @ cue, k).indices.tolist()}
        for name in ("avg_jaccard_score", size_group(len(instance.candidates))):
            if name is not None:
                scores[name].append(jaccard(picked, instance.associations))
                chance[name].append(random_jaccard(len(instance.candidates), k))
    if not scores[MAIN_METRIC]:
        raise ValueError(
            f"{task_dir.name}: no instance with 10 or 12 candidates, so {MAIN_METRIC} "
            "(DataComp's WinoGAViL score) is undefined"
        )
    # A group without instances has no mean: it is left out rather than reported as 0.
    return (
        {name: sum(v) / len(v) for name, v in scores.items() if v},
        {name: sum(v) / len(v) for name, v in chance.items() if v},
    )


def _embed_named_images(
    folder: Path, names: list[str], embed_images, batch_size: int, advance
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """name -> embedding for every decodable image, and name -> why not for the rest."""
    embeddings: dict[str, torch.Tensor] = {}
    unusable: dict[str, str] = {}
    for start in range(0, len(names), batch_size):
        batch, images = [], []
        for name in names[start : start + batch_size]:
            path = folder / f"{name}{IMAGE_SUFFIX}"
            if not path.is_file():
                unusable[name] = "missing image"
                continue
            try:
                images.append(decode_image(path.read_bytes(), name=str(path)))
            except ImageDecodeError:
                unusable[name] = "undecodable image"
                continue
            batch.append(name)
        if images:
            embeddings.update(zip(batch, embed_images(images)))
            advance(len(images))
    return embeddings, unusable
