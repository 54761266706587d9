"""`latentspace eval`, `eval-text` and `check-compat`: numbers about models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from latentspace.cli.common import console, reports_errors
from latentspace.cli.options import given, settings_from, with_settings
from latentspace.eval.evaluate import ENV_PREFIX, PANELS, EvalSettings, TextEvalSettings
from latentspace.workspace import DEFAULT as WORKSPACE


@with_settings(EvalSettings, PANELS, env_prefix=ENV_PREFIX)
@reports_errors
def evaluate(
    ctx: typer.Context,
    models: list[str] = typer.Argument(
        ...,
        help="model specs (`latentspace models --help` lists the forms): "
        "our model directories, Nomic's, hf-clip:DIR, open_clip:ARCH:CHECKPOINT",
    ),
    out: Path | None = typer.Option(
        None,
        help="folder for JSON per model, report.md and chart.png "
        "(default: the model directory for one model, else artifacts/eval)",
    ),
    **options,
) -> None:
    """Zero-shot classification and retrieval on a task suite for one or more models, side by side."""
    from latentspace.eval.evaluate import evaluate_models, report_folder, write_reports
    from latentspace.eval.report import print_table

    settings = settings_from(EvalSettings, ctx, given(ctx, options), env_prefix=ENV_PREFIX)
    results = evaluate_models(models, settings, console=console)
    folder = report_folder(models, out)
    for result in results:
        print_table(result, Console())
    write_reports(models, results, folder)
    console.print(f"results written to {folder} (JSON, report.md, chart.png)")


@with_settings(TextEvalSettings, PANELS, env_prefix=ENV_PREFIX)
@reports_errors
def evaluate_text(
    ctx: typer.Context,
    models: list[str] = typer.Argument(
        ...,
        help="model specs with a text side: model directories, baselines, or "
        "text models alone (builtin:all-MiniLM-L6-v2, a sentence-transformers "
        "or nomic-embed-text directory)",
    ),
    out: Path = typer.Option(WORKSPACE.eval_text, help="folder for JSON per model and report.md"),
    **options,
) -> None:
    """Score the text side alone (no image involved, no cache) for several models side by side: a
    model directory must score exactly what its text model scores alone."""
    from latentspace.eval.evaluate import evaluate_text_models, write_reports
    from latentspace.eval.report import print_text_comparison

    settings = settings_from(TextEvalSettings, ctx, given(ctx, options), env_prefix=ENV_PREFIX)
    results = evaluate_text_models(models, settings)
    print_text_comparison(results, Console())
    write_reports(models, results, out, prefix="text", chart=False)
    console.print(f"results written to {out}")


@reports_errors
def check_compat(
    model: str = typer.Argument(
        ...,
        help="an image model that records a text space: a latentspace model directory "
        "or a nomic-embed-vision directory",
    ),
    text: str = typer.Option(
        ..., help="the text model: builtin:all-MiniLM-L6-v2, a text model directory, a nomic-embed-text directory"
    ),
) -> None:
    """Check that an image model and a text model share a latent space, bit for bit. Exit 1 if not."""
    from latentspace.compat import PROBE_TEXTS
    from latentspace.compat import check_compat as run_check

    report = run_check(model, text)
    out = Console()
    if not report.same_space:
        out.print(Text(report.mismatch or ""), soft_wrap=True)
        out.print("[bold red]different latent spaces[/]: embeddings of the two are not comparable")
        raise typer.Exit(1)
    out.print(f"shared space: {report.space}")
    verdict = (
        "[green]bit-identical[/]" if report.bit_identical else f"[red]differ (max |diff| {report.max_abs_diff:.3g})[/]"
    )
    out.print(
        f"text embeddings via {model} vs the text model alone, {len(PROBE_TEXTS)} probe texts "
        f"x task types {', '.join(report.task_types)}, both on {report.runtime}: {verdict}"
    )
    if not report.ok:
        raise typer.Exit(1)
    out.print("[bold green]compatible[/]")
