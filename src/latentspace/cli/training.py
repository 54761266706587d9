"""`latentspace train`, `quickstart` and `ablate`: training runs."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from latentspace.cli.common import console, reports_errors
from latentspace.workspace import DEFAULT as WORKSPACE
from latentspace.workspace import Workspace


@reports_errors
def train(
    config: Path = typer.Argument(..., help="YAML config (see src/latentspace/configs/)"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. train.steps=200"),
) -> None:
    """Train a vision tower against the frozen text tower (resumes if a checkpoint exists)."""
    from latentspace.config import load_config
    from latentspace.train.loop import train as run_train

    result = run_train(load_config(config, overrides or []), console=console)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for the job
        return
    console.print(
        f"trained {result.steps} steps in {result.seconds:.0f}s (skipped samples: {result.samples_skipped}, "
        f"shard errors: {result.shard_errors}); model at [bold]{result.model_dir}[/]"
    )


@reports_errors
def ablate(
    artifacts: Path = typer.Option(WORKSPACE.root, help="folder for the corpus, caches and runs (as quickstart)"),
    steps: int = typer.Option(150, min=1, help="training steps per recipe (the same budget for all)"),
    batch_size: int = typer.Option(256, min=2),
    recipe: list[str] | None = typer.Option(None, help="run only these recipes (repeatable); default all six"),
    text_lr: float = typer.Option(2e-5, help="learning rate of trainable text towers"),
    seeds: int = typer.Option(
        3, min=1, help="runs per recipe (seeds 0..N-1); the table shows mean ± standard deviation over them"
    ),
) -> None:
    """Train the six recipes from the same start with the same budget on the emoji corpus, each with
    several seeds; one table of mean ± standard deviation."""
    from latentspace.ablate import print_ablation, run_ablation
    from latentspace.config import RECIPES

    rows = run_ablation(
        artifacts,
        steps=steps,
        batch_size=batch_size,
        recipes=list(recipe or RECIPES),
        text_lr=text_lr,
        seeds=seeds,
        console=console,
    )
    print_ablation(rows, Console())
    console.print(f"table written to {Workspace(artifacts).ablation / 'ablation.md'}")


@reports_errors
def quickstart(
    artifacts: Path = typer.Option(WORKSPACE.root, help="folder for corpus, caches, runs and the model"),
    overrides: list[str] | None = typer.Argument(None, help="config overrides, e.g. train.steps=100"),
) -> None:
    """Build the emoji corpus, train the default model, evaluate it and show a few matches."""
    from latentspace.quickstart import run_quickstart

    run_quickstart(artifacts, overrides or [], console=Console())
