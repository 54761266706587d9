"""Run tasks and suites against any `Embeds`, ours or a baseline.

The runner only calls the protocol's two methods, so the numbers for our model and for a
baseline come from the same code path. Images are streamed from the shards and embedded batch by
batch: only embeddings (N x D floats) are kept, never the decoded images. Decoding can run in
DataLoader workers (`workers`); the batches the model sees are the same for any number of them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console

from latentspace.eval import winogavil
from latentspace.eval.loader import decoded_chunks
from latentspace.eval.metrics import (
    chance_levels,
    f1_macro_chance,
    multilabel_metrics,
    retrieval_metrics,
    zeroshot_metrics,
)
from latentspace.eval.tasks import (
    CLASSIFICATION,
    MULTILABEL,
    RETRIEVAL,
    WINOGAVIL,
    SampleStats,
    TaskSpec,
    load_groups,
    load_suite,
    read_classnames,
    read_templates,
    task_type_of,
)
from latentspace.models.embedder import Embeds
from latentspace.progress import Progress, progress_for, shown

log = logging.getLogger(__name__)

# Captions are embedded with the search_query prefix in training (the Nomic recipe), so class
# prompts and retrieval captions are embedded the same way at evaluation.
TEXT_TASK_TYPE = "search_query"


@dataclass
class TaskResult:
    name: str
    type: str
    main_metric: str
    metrics: dict[str, float]
    chance: dict[str, float]  # the same keys, for a model that ranks at random
    n_samples: int  # images evaluated
    n_skipped: int  # samples dropped (corrupt image, missing label); see skipped_reasons
    seconds: float
    skipped_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def main_value(self) -> float:
        return self.metrics[self.main_metric]


@dataclass
class SuiteResult:
    model: str
    space: str
    suite: str
    tasks: list[TaskResult]
    missing: list[str]  # suite tasks whose directory was absent
    groups: dict[str, list[str]] = field(default_factory=dict)  # sub-average name -> task names
    # Tasks in the whole suite, so a run restricted with `only` is not mistaken for a full one;
    # 0 = not given (a text-only result, or one built by hand): tasks + missing is used instead.
    n_suite_tasks: int = 0
    # Benchmarks of the text side alone (eval.text_retrieval), reported beside the image tasks but
    # never part of the suite's average: a suite score must mean the same with or without them.
    text_tasks: list[TaskResult] = field(default_factory=list)
    # modality -> the runtime and precision its forwards ran on (latentspace.runtime)
    runtimes: dict[str, str] = field(default_factory=dict)

    @property
    def average(self) -> float | None:
        """Plain mean of the main metrics over the tasks that ran (DataComp's suite score).

        Only comparable with a published suite score when `complete`; reports say so.
        """
        if not self.tasks:
            return None
        return sum(task.main_value for task in self.tasks) / len(self.tasks)

    @property
    def complete(self) -> bool:
        """True when every task of the suite ran, so `average` is the suite score."""
        return not self.missing and len(self.tasks) >= self.n_expected

    @property
    def n_expected(self) -> int:
        """How many tasks the suite score averages over."""
        return max(self.n_suite_tasks, len(self.tasks) + len(self.missing))

    def group_averages(self) -> dict[str, float | None]:
        """Mean main metric per group; None when any member did not run (a partial mean misleads)."""
        values = {task.name: task.main_value for task in self.tasks}
        averages: dict[str, float | None] = {}
        for group, members in self.groups.items():
            ran = all(member in values for member in members)
            averages[group] = sum(values[m] for m in members) / len(members) if ran else None
        return averages


def class_embeddings(
    model: Embeds,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    task_type: str = TEXT_TASK_TYPE,
    batch_size: int = 256,
) -> torch.Tensor:
    """(C, D) prompt-ensembled class embeddings: every template x class, mean over templates.

    Averaging several phrasings ("a photo of a {c}.", "art of the {c}.") smooths out wording
    the text model happens to like or dislike; re-normalising keeps cosine scores comparable.
    """
    prompts = [template.replace("{c}", name) for name in classnames for template in templates]
    per_prompt = _embed_texts(model, prompts, task_type, batch_size)
    per_class = per_prompt.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


@torch.no_grad()
def evaluate_task(
    model: Embeds,
    task_dir: Path,
    spec: TaskSpec,
    *,
    batch_size: int = 256,
    progress: bool | Progress = True,
    text_task_type: str = TEXT_TASK_TYPE,
    workers: int = 0,
) -> TaskResult:
    """Evaluate one task directory; raises FileNotFoundError if it or a shard is missing.

    `text_task_type` selects the text model's prefix for class prompts and captions (its query
    prefix by default, e.g. `search_query: ` for nomic-embed-text). `workers` DataLoader processes
    decode the images (0: this process); the result does not depend on it. `progress`: True
    reports images embedded on stderr (a bar on a terminal, plain lines otherwise), or pass the
    `Progress` to report to."""
    task_dir = Path(task_dir)
    _check_declared_type(task_dir, spec)
    start = time.perf_counter()
    stats = SampleStats()
    runners = {
        CLASSIFICATION: _run_classification,
        RETRIEVAL: _run_retrieval,
        MULTILABEL: _run_multilabel,
        WINOGAVIL: _run_winogavil,
    }
    run = runners[spec.type]
    if isinstance(progress, bool):
        progress = _image_progress(Console(stderr=True) if progress else None)
        progress.describe(spec.name)
    settings = _Settings(batch_size, progress, text_task_type, workers)
    metrics, chance = run(model, task_dir, spec, stats, settings)
    if stats.n_skipped:
        log.warning("%s: skipped %d samples: %s", spec.name, stats.n_skipped, dict(stats.skipped))
    return TaskResult(
        name=spec.name,
        type=spec.type,
        main_metric=spec.main_metric,
        metrics=metrics,
        chance=chance,
        n_samples=stats.n_yielded,
        n_skipped=stats.n_skipped,
        seconds=time.perf_counter() - start,
        skipped_reasons=dict(stats.skipped),
    )


def evaluate_suite(
    model: Embeds,
    suite_path: str | Path,
    *,
    batch_size: int = 256,
    progress: bool = True,
    only: list[str] | None = None,
    data_dir: str | Path | None = None,
    text_task_type: str = TEXT_TASK_TYPE,
    workers: int = 0,
    console: Console | None = None,
) -> SuiteResult:
    """Evaluate every task of a suite (or those named in `only`).

    `suite_path` may be a built-in suite name ("datacomp"); `data_dir`, when given, holds the
    task directories instead of the suite file's folder. A task whose directory is absent is
    listed in `missing` rather than failing the whole run: a partly downloaded DataComp suite
    still gives numbers for what is there, and the result says it is incomplete. A task that is
    present but broken (a missing shard) still raises.

    With `progress`, each task reports its images (and which task of how many it is) on
    `console`, stderr by default: a bar on a terminal, plain lines otherwise.
    """
    suite_name, specs, task_root = load_suite(suite_path, data_dir=data_dir)
    groups = load_groups(suite_path)
    result = SuiteResult(
        model.name,
        model.space,
        suite_name,
        tasks=[],
        missing=[],
        groups=groups,
        n_suite_tasks=len(specs),
        runtimes=model.runtime_names(),
    )
    selected = _select(specs, only)
    model = _SeenImages(model)
    for n, spec in enumerate(selected, start=1):
        task_dir = spec.find_task_dir(task_root)
        if task_dir is None:
            log.warning(
                "%s: no task directory in %s (looked for %s); listed as missing",
                spec.name,
                task_root,
                ", ".join(spec.directory_names),
            )
            result.missing.append(spec.name)
            continue
        images = _image_progress((console or Console(stderr=True)) if progress else None)
        images.describe(f"{spec.name} (task {n}/{len(selected)})")
        result.tasks.append(
            evaluate_task(
                model,
                task_dir,
                spec,
                batch_size=batch_size,
                progress=images,
                text_task_type=text_task_type,
                workers=workers,
            )
        )
    return result


class _SeenImages:
    """`model`, except that within one suite run an image with the same pixels as one an earlier
    task embedded is not embedded again: the emoji suite's unseen-style tasks (all concepts,
    held-out, category, retrieval) share their images, so this cuts its evaluation time by half.
    Holds at most `capacity` vectors (oldest dropped first), so a large suite stays bounded."""

    def __init__(self, model: Embeds, capacity: int = 50_000):
        self.model, self.name, self.space, self.capacity = model, model.name, model.space, capacity
        self._vectors: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def embed_texts(self, texts: Sequence[str], task_type: str = TEXT_TASK_TYPE) -> torch.Tensor:
        return self.model.embed_texts(texts, task_type=task_type)

    def runtime_names(self) -> dict[str, str]:
        return self.model.runtime_names()

    def embed_images(self, images: Sequence) -> torch.Tensor:
        keys = [_pixels_key(image) for image in images]
        new = [i for i, key in enumerate(keys) if key is None or key not in self._vectors]
        if len(new) == len(images):  # nothing seen before: one plain call, nothing to stitch
            vectors = self.model.embed_images(images)
            self._remember(keys, vectors)
            return vectors
        fresh = self.model.embed_images([images[i] for i in new]) if new else None
        by_index = dict(zip(new, fresh)) if fresh is not None else {}
        vectors = torch.stack([by_index[i] if i in by_index else self._vectors[key] for i, key in enumerate(keys)])
        self._remember([keys[i] for i in new], fresh)
        return vectors

    def _remember(self, keys: list[bytes | None], vectors: torch.Tensor | None) -> None:
        for key, vector in zip(keys, vectors if vectors is not None else []):
            if key is not None:
                self._vectors[key] = vector.detach()
        while len(self._vectors) > self.capacity:
            self._vectors.popitem(last=False)


def _pixels_key(image) -> bytes | None:
    """A digest of a decoded image's mode, size and pixels; None for anything else (not memoised)."""
    if not isinstance(image, Image.Image):
        return None
    digest = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.digest()


def _select(specs: list[TaskSpec], only: list[str] | None) -> list[TaskSpec]:
    if only is None:
        return specs
    unknown = sorted(set(only) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"tasks not in the suite: {unknown}; available: {[s.name for s in specs]}")
    return [spec for spec in specs if spec.name in only]


def _check_declared_type(task_dir: Path, spec: TaskSpec) -> None:
    """A suite entry and its directory must agree, or labels would be read as the wrong thing."""
    declared = task_type_of(task_dir)
    if declared != spec.type:
        raise ValueError(f"{spec.name}: the suite says {spec.type!r} but {task_dir} holds {declared!r}")


@dataclass(frozen=True)
class _Settings:
    """How a task is run, passed down to the per-type runners as one value."""

    batch_size: int
    progress: Progress  # images embedded
    text_task_type: str
    workers: int


def _run_classification(model, task_dir, spec, stats, settings: _Settings):
    # Class prompts first: a text-side failure surfaces before the long image pass.
    classnames = read_classnames(task_dir)
    class_emb = class_embeddings(
        model, classnames, read_templates(task_dir), task_type=settings.text_task_type, batch_size=settings.batch_size
    )
    image_emb, targets = _embed_image_stream(model, task_dir, spec, stats, settings)
    groups = None
    if spec.group_by is None:
        labels = targets
    else:  # (class, group) pairs
        labels, groups = [label for label, _ in targets], torch.tensor([group for _, group in targets])
    metrics = zeroshot_metrics(image_emb, class_emb, torch.tensor(labels), groups)
    chance = chance_levels(spec.type, len(classnames))
    chance["f1_macro"] = f1_macro_chance(labels, len(classnames))  # depends on the class balance
    for name in metrics.keys() - chance.keys():  # per-group accuracies: a random ranker's acc1 / acc5
        chance[name] = chance[name.split("_")[0]]
    return metrics, chance


def _run_multilabel(model, task_dir, spec, stats, settings: _Settings):
    classnames = read_classnames(task_dir)
    class_emb = class_embeddings(
        model, classnames, read_templates(task_dir), task_type=settings.text_task_type, batch_size=settings.batch_size
    )
    image_emb, label_sets = _embed_image_stream(model, task_dir, spec, stats, settings)
    targets = torch.zeros(len(label_sets), len(classnames), dtype=torch.bool)
    for row, labels in enumerate(label_sets):
        targets[row, labels] = True
    metrics = multilabel_metrics(image_emb, class_emb, targets)
    positives = targets.sum(dim=0).tolist()
    return metrics, chance_levels(spec.type, len(label_sets), positives_per_class=positives)


def _run_retrieval(model, task_dir, spec, stats, settings: _Settings):
    image_emb, caption_lists = _embed_image_stream(model, task_dir, spec, stats, settings)
    captions = [caption for image_captions in caption_lists for caption in image_captions]
    text_to_image = torch.tensor([i for i, texts in enumerate(caption_lists) for _ in texts])
    text_emb = _embed_texts(model, captions, settings.text_task_type, settings.batch_size)
    metrics = retrieval_metrics(image_emb, text_emb, text_to_image)
    return metrics, chance_levels(spec.type, len(caption_lists), len(captions))


def _run_winogavil(model, task_dir, spec, stats, settings: _Settings):
    with shown(settings.progress, None) as progress:
        return winogavil.evaluate(
            task_dir,
            stats,
            batch_size=settings.batch_size,
            advance=progress.advance,
            embed_images=lambda images: _unit_rows(model.embed_images(images)),
            embed_texts=lambda texts: _embed_texts(model, texts, settings.text_task_type, settings.batch_size),
        )


def _embed_image_stream(
    model: Embeds, task_dir: Path, spec: TaskSpec, stats: SampleStats, settings: _Settings
) -> tuple[torch.Tensor, list]:
    """Embed the task's usable images in batches of batch_size; returns embeddings and targets.

    Decoded chunks arrive in task order whatever the number of workers, and the model's batches are
    cut from the stream of usable samples, so they are the same batches either way.
    """
    batch_size = settings.batch_size
    embeddings, targets, pending = [], [], []
    # The number of usable images is only known once the shards are read: no total, no ETA.
    with shown(settings.progress, None) as progress:
        for chunk in decoded_chunks(
            task_dir, spec.type, chunk_size=batch_size, workers=settings.workers, group_by=spec.group_by
        ):
            stats.add(chunk.stats)
            pending.extend(chunk.images)
            targets.extend(chunk.targets)
            while len(pending) >= batch_size:
                embeddings.append(_unit_rows(model.embed_images(pending[:batch_size])))
                progress.advance(batch_size)
                pending = pending[batch_size:]
        if pending:
            embeddings.append(_unit_rows(model.embed_images(pending)))
            progress.advance(len(pending))
    if not embeddings:
        why = f"skipped: {dict(stats.skipped)}" if stats.n_skipped else "the shards are empty"
        raise ValueError(f"{spec.name}: no usable samples ({why})")
    return torch.cat(embeddings), targets


def _embed_texts(model: Embeds, texts: Sequence[str], task_type: str, batch_size: int) -> torch.Tensor:
    chunks = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat([_unit_rows(model.embed_texts(chunk, task_type=task_type)) for chunk in chunks])


def _unit_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """float32 CPU rows of norm 1, whatever device or dtype the model returned."""
    return F.normalize(embeddings.detach().float().cpu(), dim=-1)


def _image_progress(console: Console | None) -> Progress:
    """Progress of one task's image pass on `console` (nothing without one)."""
    return progress_for(console, what="images", verb="evaluated")
