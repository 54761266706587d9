"""`latentspace ablate`: the seed study's comparison of the six recipes, reproduced small.

Every recipe starts from the same point and gets the same budget (steps x batch) on the emoji
corpus. The starting point is the quickstart model (a ResNet-10t already trained into
all-MiniLM-L6-v2's space): no image model pretrained elsewhere ships in a package registry, so
"pretrained vision tower" here means that one. It starts every recipe's vision tower, is the
frozen image tower of `locked_image`, and the frozen third tower of Three Towers. The `+text`
recipes mix in WordNet definition -> lemma pairs from synsets disjoint from the text benchmark's.

Reported per recipe: zero-shot top-1 on the Noto art style (never trained on) over all concepts
and over held-out concepts, and the text tower's own WordNet retrieval (MRR) before and after:
a recipe that trains the text tower moves the latent space, and this shows by how much.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentspace.config import BUILTIN_TEXT_MODEL, RECIPES
from latentspace.data.emoji import build_emoji_corpus
from latentspace.data.wordnet import DEFAULT_DIR as WORDNET_DIR, build_wordnet_task, write_wordnet_pairs
from latentspace.eval.prompt_cache import PromptCache
from latentspace.eval.runner import evaluate_suite
from latentspace.eval.text_retrieval import evaluate_text_retrieval, load_text_task
from latentspace.models.load import load
from latentspace.quickstart import quickstart_config
from latentspace.train.loop import train

IMAGE_TASKS = ("emoji_noto_all", "emoji_noto_heldout")


@dataclass
class AblationRow:
    recipe: str
    noto_all_top1: float
    noto_heldout_top1: float
    text_mrr: float
    text_mrr_before: float
    space_changed: bool
    train_seconds: float


def run_ablation(artifacts: Path, *, steps: int, batch_size: int, recipes: list[str], text_lr: float,
                 console: Console) -> list[AblationRow]:
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    npm_cache = artifacts / "cache" / "npm"
    corpus = build_emoji_corpus(artifacts / "emoji", cache_dir=npm_cache, progress=console.print)
    start = _starting_model(artifacts, corpus, console)
    text_task = load_text_task(build_wordnet_task(WORDNET_DIR if artifacts == Path("artifacts") else artifacts / "wordnet",
                                                  cache_dir=npm_cache, progress=console.print)["path"])
    pairs = write_wordnet_pairs(artifacts / "ablation" / "wordnet_pairs.jsonl", cache_dir=npm_cache)
    before = evaluate_text_retrieval(load(BUILTIN_TEXT_MODEL), text_task).metrics["mrr"]
    start_space = load(str(start)).space
    suite = Path(corpus["out_dir"]) / corpus["eval_suite"]
    rows = []
    for recipe in recipes:
        console.rule(f"[bold]{recipe}")
        out = artifacts / "ablation" / recipe.replace("+", "_plus_")
        overrides = [f"recipe={recipe}", f"train.output_dir={out}", f"train.steps={steps}",
                     f"train.batch_size={batch_size}", "optim.warmup_steps=10", f"vision.init_from={start}",
                     f"optim.text_lr={text_lr}", "train.checkpoint_every=50"]
        if recipe.startswith("three_towers"):
            overrides += [f"three_towers.model_dir={start}", f"three_towers.cache_dir={artifacts / 'cache' / 'third_tower'}"]
        if recipe.endswith("+text"):
            overrides.append(f"data.text_pairs.path={pairs}")
        t = time.perf_counter()
        result = train(quickstart_config(artifacts, corpus, overrides), console=console)
        seconds = time.perf_counter() - t
        model = load(str(result.model_dir))
        report = evaluate_suite(PromptCache(model, artifacts / "cache" / "prompts"), suite, only=list(IMAGE_TASKS),
                                progress=False)
        top1 = {r.name: r.metrics["acc1"] for r in report.tasks}
        after = evaluate_text_retrieval(model, text_task).metrics["mrr"]
        rows.append(AblationRow(recipe, top1[IMAGE_TASKS[0]], top1[IMAGE_TASKS[1]], after, before,
                                model.space != start_space, seconds))
        _write(rows, artifacts / "ablation", steps, batch_size)
    return rows


def _starting_model(artifacts: Path, corpus: dict, console: Console) -> Path:
    """The quickstart model: reused if `make demo` made it, trained (resumably) otherwise."""
    model = artifacts / "quickstart" / "model"
    if not (model / "config.json").is_file():
        console.print("the ablation starts from the quickstart model; training it first (as `make demo` does)")
        train(quickstart_config(artifacts, corpus, []), console=console)
    return model


def _write(rows: list[AblationRow], folder: Path, steps: int, batch_size: int) -> None:
    """ablation.json / .md, keeping rows of other recipes from earlier runs with the same budget
    (so `--recipe X` runs add up to one table)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ablation.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if (earlier.get("steps"), earlier.get("batch_size")) == (steps, batch_size):
        done = {r.recipe for r in rows}
        rows = [AblationRow(**r) for r in earlier["rows"] if r["recipe"] not in done] + rows
        rows.sort(key=lambda r: RECIPES.index(r.recipe))
    path.write_text(json.dumps({"steps": steps, "batch_size": batch_size, "rows": [asdict(r) for r in rows]}, indent=1))
    lines = ["| recipe | Noto all top-1 | Noto held-out top-1 | text MRR before → after | space | train s |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| `{r.recipe}` | {100 * r.noto_all_top1:.1f} | {100 * r.noto_heldout_top1:.1f} | "
                     f"{100 * r.text_mrr_before:.1f} → {100 * r.text_mrr:.1f} | "
                     f"{'new' if r.space_changed else 'unchanged'} | {r.train_seconds:.0f} |")
    (folder / "ablation.md").write_text("\n".join(lines) + "\n")


def print_ablation(rows: list[AblationRow], console: Console) -> None:
    table = Table(title="six recipes, same start and budget (zero-shot on the unseen Noto style; text MRR on WordNet)")
    for column in ("recipe", "Noto all top-1", "held-out top-1", "text MRR before → after", "space"):
        table.add_column(column, justify="left" if column in ("recipe", "space") else "right")
    for r in rows:
        table.add_row(r.recipe, f"{100 * r.noto_all_top1:.1f}%", f"{100 * r.noto_heldout_top1:.1f}%",
                      f"{100 * r.text_mrr_before:.1f} → {100 * r.text_mrr:.1f}",
                      "new" if r.space_changed else "unchanged")
    console.print(table)
