"""What the emoji corpus is made of: training samples, evaluation tasks, and the shards they are
written to.

A training sample is one emoji (or one of its skin-tone variants) in one art style, keyed by style
and code points, with its name as text and its captions in json. The evaluation tasks are
CLIP_benchmark's on-disk webdataset layout (`test/0.tar ...`, `classnames.txt`, templates), one
folder per task, listed in `suite.yaml`. Shards are written with a fixed mtime, so the same
samples give the same bytes. data/emoji.py decides which concepts and styles go where.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
import yaml

from latentspace.data.emoji_concepts import EmojiConcept, clean_text
from latentspace.progress import NullProgress, Progress

# Art style -> the name used in task names ("emoji_noto_all"), after the font the art comes from.
# The npm styles (EMOJI_PACKAGES) define the concepts; OpenMoji draws them in a third style.
STYLE_TASK_NAMES = {"google": "noto", "twitter": "twemoji", "openmoji": "openmoji"}

TEMPLATES = ["{c}", "an emoji of {c}", "a {c} emoji", "an icon of {c}", "a drawing of {c}"]


@dataclass
class Art:
    """The PNGs of one art style, by emoji-datasource image file name ("1f44b-1f3fb.png").

    An npm package says which emoji it draws (`has_img_<style>`) and ships fallback art from
    other styles for the rest, so its claim is checked; OpenMoji's files are all its own art.
    """

    style: str
    images: dict[str, bytes]
    check_claims: bool = True

    def has(self, image: str, styles: frozenset[str]) -> bool:
        """True when the style draws the emoji (claimed, for an npm package) and has its image."""
        return (self.style in styles or not self.check_claims) and image in self.images


def train_samples(concepts: list[EmojiConcept], art: Art, include_skin_tones: bool) -> tuple[list[dict], list[str]]:
    """Webdataset samples of the training concepts in one style; also the images it lacks."""
    samples, missing = [], []
    for c in concepts:
        renderings = [(c.unified, c.image, c.styles, None)]
        if include_skin_tones:
            renderings += [(v.unified, v.image, v.styles, v.skin_tone) for v in c.variants]
        for unified, image, styles, skin_tone in renderings:
            if art.has(image, styles):
                samples.append(_train_sample(c, unified, art, image, skin_tone))
            else:
                missing.append(unified)
    return samples, missing


def _train_sample(c: EmojiConcept, unified: str, art: Art, image: str, skin_tone: str | None) -> dict:
    style = STYLE_TASK_NAMES[art.style]
    meta = {
        "concept_id": c.concept_id,
        "unified": unified,
        "style": style,
        "name": c.name,
        "captions": c.captions,
        "category": c.category,
        "subcategory": c.subcategory,
        "skin_tone": skin_tone,
    }
    return {
        # Unique across styles: the same emoji in two training styles is two samples (caches and
        # webdataset's grouping of files go by key).
        "__key__": f"{style}_{unified.lower()}",
        "png": art.images[image],
        "txt": c.name.encode(),
        "json": json.dumps(meta, ensure_ascii=False).encode(),
    }


@dataclass
class Task:
    """An evaluation task before it is written: CLIP_benchmark layout plus suite metadata."""

    type: str  # "zeroshot_classification" | "retrieval"
    description: str
    samples: list[dict]
    classnames: list[str] | None = None


def eval_tasks(
    concepts: list[EmojiConcept], heldout: set[int], art: dict[str, Art], train_styles: list[str], eval_style: str
) -> dict[str, Task]:
    """The evaluation suite: all and held-out concepts in each style not trained on (the main
    evaluation style first, with category and retrieval tasks), then held-out concepts in each
    training style. A style's tasks cover the concepts it draws; empty tasks are left out."""
    tasks = {}
    unseen = [eval_style] + [s for s in STYLE_TASK_NAMES if s != eval_style and s not in train_styles]
    for style in unseen:
        name, style_art = STYLE_TASK_NAMES[style], art[style]
        drawn = [c for c in concepts if style_art.has(c.image, c.styles)]
        held = [c for c in drawn if c.concept_id in heldout]
        tasks[f"emoji_{name}_all"] = _classification(
            drawn, _name, style_art, f"all concepts, {name} art (an art style unseen in training)"
        )
        tasks[f"emoji_{name}_heldout"] = _classification(
            held, _name, style_art, f"held-out concepts only, {name} art (unseen style and unseen concepts)"
        )
        if style == eval_style:
            categorised = [c for c in drawn if c.category != "Component"]
            tasks[f"emoji_{name}_category"] = _classification(
                categorised, _category, style_art, f"coarse emoji category, {name} art"
            )
            tasks[f"emoji_{name}_retrieval"] = Task(
                "retrieval",
                f"image-text retrieval over all concepts and their captions, {name} art",
                [_eval_sample(c, style_art, txt="\n".join(c.captions)) for c in drawn],
            )
    for style in train_styles:
        name, style_art = STYLE_TASK_NAMES[style], art[style]
        held = [c for c in concepts if c.concept_id in heldout and style_art.has(c.image, c.styles)]
        tasks[f"emoji_{name}_heldout"] = _classification(
            held, _name, style_art, f"held-out concepts only, {name} art (seen style, unseen concepts)"
        )
    return {name: task for name, task in tasks.items() if task.samples}


def _name(c: EmojiConcept) -> str:
    return c.name


def _category(c: EmojiConcept) -> str:
    return clean_text(c.category)


def _classification(
    concepts: list[EmojiConcept], label: Callable[[EmojiConcept], str], art: Art, description: str
) -> Task:
    """A zero-shot classification task; classes in first-appearance order, so stable."""
    classnames = list(dict.fromkeys(label(c) for c in concepts))
    index = {name: i for i, name in enumerate(classnames)}
    samples = [_eval_sample(c, art, cls=str(index[label(c)])) for c in concepts]
    return Task("zeroshot_classification", description, samples, classnames)


def _eval_sample(c: EmojiConcept, art: Art, **text: str) -> dict:
    """Base image only: skin variants would add near-duplicate test items."""
    return {
        "__key__": c.unified.lower(),
        "png": art.images[c.image],
        **{k: v.encode() for k, v in text.items()},
    }


def write_task(task_dir: Path, task: Task, samples_per_shard: int, progress: Progress | None = None) -> dict:
    """Write one task in CLIP_benchmark's on-disk webdataset layout."""
    test_dir = task_dir / "test"
    shards = write_shards(task.samples, test_dir, "{}.tar", samples_per_shard, progress)
    (test_dir / "nshards.txt").write_text(f"{len(shards)}\n")
    kind = "retrieval" if task.type == "retrieval" else "classification"
    (task_dir / "dataset_type.txt").write_text(kind + "\n")
    summary = {"path": f"eval/{task_dir.name}", "type": task.type, "samples": len(task.samples)}
    if task.classnames is not None:
        (task_dir / "classnames.txt").write_text("".join(f"{n}\n" for n in task.classnames))
        (task_dir / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in TEMPLATES))
        summary["classes"] = len(task.classnames)
    return summary


def write_suite(path: Path, tasks: dict[str, Task]) -> None:
    metric = {"zeroshot_classification": "acc1", "retrieval": "mean_recall@1"}
    suite = {
        "name": "emoji",
        "tasks": [
            {"name": n, "type": t.type, "main_metric": metric[t.type], "description": t.description}
            for n, t in tasks.items()
        ],
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def write_shards(
    samples: list[dict], directory: Path, pattern: str, per_shard: int, progress: Progress | None = None
) -> list[Path]:
    """Write samples in order, `per_shard` per tar; a fixed mtime keeps shards reproducible."""
    directory.mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    paths = []
    for start in range(0, len(samples), per_shard):
        path = directory / pattern.format(len(paths))
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
                progress.advance()
        paths.append(path)
    return paths
