"""`latentspace quickstart`: corpus -> training -> evaluation -> a few embeddings, in one go.

Everything lands under one artifacts folder; running it again reuses the corpus, the text cache
and a finished (or interrupted) training run instead of starting over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentspace.config import RunConfig, load_config
from latentspace.data.emoji import build_emoji_corpus
from latentspace.eval.evaluate import EvalSettings, evaluate_model
from latentspace.eval.report import print_table, write_json
from latentspace.eval.tasks import iter_task_samples, read_classnames
from latentspace.models.embedder import Embedder
from latentspace.models.load import load
from latentspace.runtime import on_runtimes
from latentspace.train.loop import train
from latentspace.workspace import DEFAULT as WORKSPACE
from latentspace.workspace import Workspace

DEMO_QUERIES = ["a red heart", "a smiling cat", "a slice of pizza", "a rocket", "rain"]


def packaged_config(name: str = "quickstart") -> Path:
    return Path(str(resources.files("latentspace") / "configs" / f"{name}.yaml"))


@dataclass
class QuickstartResult:
    model_dir: Path
    eval_json: Path
    seconds: dict[str, float]


def quickstart_config(artifacts: Path, corpus: dict, overrides: list[str]) -> RunConfig:
    shards = [str(Path(corpus["out_dir"]) / s) for s in corpus["train_shards"]]
    return load_config(
        packaged_config(),
        [
            "data.train_shards=" + "::".join(shards),
            f"train.output_dir={Workspace(artifacts).quickstart}",
            f"train.text_cache_dir={Workspace(artifacts).text_cache}",
            *overrides,
        ],
    )


def run_quickstart(
    artifacts: Path = WORKSPACE.root, overrides: list[str] | None = None, console: Console | None = None
) -> QuickstartResult:
    console = console or Console()
    workspace = Workspace(artifacts)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    console.rule("[bold]1/4 corpus: emoji art (Twemoji and Noto to train, OpenMoji never seen)")
    corpus = build_emoji_corpus(workspace.emoji, cache_dir=workspace.npm_cache, console=console)
    c = corpus["counts"]
    console.print(
        f"{c['train_images']} training images of {c['train_concepts']} concepts; "
        f"{c['heldout_concepts']} concepts held out of training"
    )
    seconds["corpus"] = time.perf_counter() - t

    t = time.perf_counter()
    console.rule("[bold]2/4 training the vision tower's head into all-MiniLM-L6-v2's space")
    cfg = quickstart_config(artifacts, corpus, overrides or [])
    result = train(cfg, console=console)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    console.rule("[bold]3/4 zero-shot evaluation on the unseen art style")
    model = on_runtimes(load(str(result.model_dir)))  # images on auto's runtime, text on PyTorch
    suite = Path(corpus["out_dir"]) / corpus["eval_suite"]
    report = evaluate_model(model, EvalSettings(suite=str(suite), prompt_cache=workspace.prompt_cache), console=console)
    print_table(report, console)
    eval_json = Path(cfg.train.output_dir) / "eval.json"
    write_json(report, eval_json)
    seconds["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    console.rule("[bold]4/4 embedding a few images and texts")
    show_matches(model, suite.parent / "emoji_openmoji_heldout", console)
    seconds["demo"] = time.perf_counter() - t

    console.print(f"\nmodel saved at [bold]{result.model_dir}[/]  (eval: {eval_json})")
    console.print(f'  from latentspace import embed\n  embed.image(["cat.png"], model="{result.model_dir}")')
    console.print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    return QuickstartResult(result.model_dir, eval_json, seconds)


def show_matches(model: Embedder, task_dir: Path, console: Console, n_images: int = 6) -> None:
    """Held-out concepts in the unseen style -> best class names; free-text queries -> best images."""
    names = read_classnames(task_dir)
    samples = [(img, label) for img, label, _ in iter_task_samples(task_dir)]
    picks = samples[:: max(1, len(samples) // n_images)][:n_images]
    class_emb = model.embed_texts([f"an emoji of {n}" for n in names], "search_query")
    image_emb = model.embed_images([img for img, _ in picks])
    table = Table(title="held-out concepts, unseen art style: image -> top-3 names")
    table.add_column("true concept")
    table.add_column("model's top 3")
    for (_, label), row in zip(picks, image_emb @ class_emb.T):
        top = [names[i] for i in row.topk(3).indices]
        table.add_row(names[label], ", ".join(f"[green]{n}[/]" if n == names[label] else n for n in top))
    console.print(table)

    all_emb = model.embed_images([img for img, _ in samples])
    query_emb = model.embed_texts(DEMO_QUERIES, "search_query")
    table = Table(title=f"text -> best of {len(samples)} held-out images")
    table.add_column("query")
    table.add_column("top 3 images (their concept)")
    for q, row in zip(DEMO_QUERIES, query_emb @ all_emb.T):
        table.add_row(q, ", ".join(names[samples[i][1]] for i in row.topk(3).indices))
    console.print(table)
