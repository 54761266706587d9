"""Evaluating models end to end: load each, put it on its runtimes, run the suite (and the text
benchmark), and write the reports. `latentspace eval`, the quickstart and the ablation all go
through `evaluate_model`, so a number means the same whichever of them printed it.

`EvalSettings` and `TextEvalSettings` are the one declaration of the two commands' settings:
`latentspace eval` and `eval-text` generate their options from these fields (latentspace.options),
with LATENTSPACE_EVAL_<SETTING> environment variables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from latentspace.config import PrecisionName, RuntimeName
from latentspace.eval.runner import TEXT_TASK_TYPE, SuiteResult
from latentspace.inputs import TaskType
from latentspace.models.embedder import Embedder
from latentspace.options import Flag
from latentspace.runtime import ForwardRuntimes, RuntimeSettings, forward_settings, precision_field, runtime_field
from latentspace.workspace import DEFAULT as WORKSPACE

PANELS = {"tasks": "Tasks", "runtime": "Runtimes", "performance": "Performance"}
ENV_PREFIX = "LATENTSPACE_EVAL_"


class TextEvalSettings(BaseModel):
    """How the text side alone is scored (`latentspace eval-text`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: Annotated[str, Flag("tasks")] = Field(
        "auto", description="text-retrieval task folder, or `auto` (the default WordNet task, built if missing)"
    )
    batch_size: Annotated[int, Flag("performance")] = Field(256, ge=1, description="texts per forward")
    text_runtime: Annotated[RuntimeName, Flag("runtime")] = runtime_field("text", "torch")
    text_precision: Annotated[PrecisionName, Flag("runtime")] = precision_field("text", "fp32")

    @model_validator(mode="after")
    def _runtimes_go_together(self) -> TextEvalSettings:
        _ = self.text
        return self

    @property
    def text(self) -> RuntimeSettings:
        return forward_settings(self, "text")


class EvalSettings(ForwardRuntimes, BaseModel):
    """How a suite is run (`latentspace eval`; the quickstart and the ablation with their own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: Annotated[str, Flag("tasks")] = Field(
        str(WORKSPACE.emoji / "eval" / "suite.yaml"), description="suite YAML, or a built-in suite: datacomp"
    )
    data_dir: Annotated[Path | None, Flag("tasks")] = Field(
        None, description="folder holding the suite's task folders (default: beside the YAML)"
    )
    only: Annotated[list[str] | None, Flag("tasks")] = Field(None, description="run only these tasks (repeatable)")
    text_task_type: Annotated[TaskType, Flag("tasks")] = Field(
        TEXT_TASK_TYPE, description="task type (prefix) for class prompts and captions"
    )
    text_benchmark: Annotated[str | None, Flag("tasks")] = Field(
        None,
        description="also score the text side alone on this text-retrieval task (a folder from `latentspace data "
        "wordnet`, or `auto`: the default WordNet task, built if missing); reported beside the image tasks, not "
        "part of the average",
    )
    prompt_cache: Annotated[Path, Flag("performance")] = Field(
        WORKSPACE.prompt_cache, description="where prompt embeddings are cached"
    )
    batch_size: Annotated[int, Flag("performance")] = Field(256, ge=1, description="images per forward")
    workers: Annotated[int | None, Flag("performance")] = Field(
        None,
        ge=0,
        description="DataLoader processes that decode images (default: CPUs - 2, at most 4, so none on 2 CPUs; "
        "0 = decode in this process)",
    )
    image_runtime: Annotated[RuntimeName, Flag("runtime")] = runtime_field("image")
    image_precision: Annotated[PrecisionName, Flag("runtime")] = precision_field("image")
    text_runtime: Annotated[RuntimeName, Flag("runtime")] = runtime_field("text", "torch")
    text_precision: Annotated[PrecisionName, Flag("runtime")] = precision_field("text", "fp32")

    @model_validator(mode="after")
    def _runtimes_go_together(self) -> EvalSettings:
        _ = self.image, self.text
        return self


def text_benchmark_path(value: str, progress=None) -> Path:
    """A task folder or file as given; `auto` builds (or reuses) the default WordNet task."""
    if value != "auto":
        return Path(value)
    from latentspace.data.wordnet import build_wordnet_task

    return Path(build_wordnet_task(WORKSPACE.wordnet, cache_dir=WORKSPACE.npm_cache, progress=progress)["path"])


def evaluate_model(
    model: Embedder | str,
    settings: EvalSettings = EvalSettings(),
    *,
    text_task=None,
    console: Console | None = None,
    progress: bool = True,
) -> SuiteResult:
    """One model (an Embedder or a spec) on the settings' suite, on the settings' runtimes (a model
    already on them is used as it is), its prompts through the prompt cache. `text_task` (a loaded
    text-retrieval task) is scored too and reported beside the suite, never in its average."""
    from latentspace.eval.loader import default_workers
    from latentspace.eval.prompt_cache import PromptCache
    from latentspace.eval.runner import evaluate_suite
    from latentspace.eval.tasks import suite_path
    from latentspace.eval.text_retrieval import evaluate_text_retrieval
    from latentspace.models.load import load
    from latentspace.runtime import on_runtimes

    model = on_runtimes(load(model) if isinstance(model, str) else model, image=settings.image, text=settings.text)
    model.require("image")
    model.require("text")
    cached = PromptCache(model, settings.prompt_cache)
    result = evaluate_suite(
        cached,
        suite_path(settings.suite),
        batch_size=settings.batch_size,
        only=settings.only or None,
        data_dir=settings.data_dir,
        text_task_type=settings.text_task_type,
        workers=default_workers() if settings.workers is None else settings.workers,
        progress=progress,
        console=console,
    )
    if text_task is not None:
        # Through the prompt cache too: its key is the space fingerprint, which covers the text
        # weights, so only a model with the very same text side can share entries.
        result.text_tasks.append(evaluate_text_retrieval(cached, text_task, batch_size=settings.batch_size))
    return result


def evaluate_models(
    specs: Sequence[str], settings: EvalSettings = EvalSettings(), *, console: Console | None = None
) -> list[SuiteResult]:
    """Every model on the same suite (and text benchmark, when the settings name one)."""
    from latentspace.eval.text_retrieval import load_text_task

    progress = console.print if console is not None else None
    text_task = (
        load_text_task(text_benchmark_path(settings.text_benchmark, progress)) if settings.text_benchmark else None
    )
    return [evaluate_model(spec, settings, text_task=text_task, console=console) for spec in specs]


def evaluate_text_models(specs: Sequence[str], settings: TextEvalSettings = TextEvalSettings()) -> list[SuiteResult]:
    """The text side alone of every model (no image runs), each as a suite result of one text task."""
    from latentspace.eval.text_retrieval import evaluate_text_retrieval, load_text_task
    from latentspace.models.load import load
    from latentspace.runtime import EXACT, on_runtimes

    task = load_text_task(text_benchmark_path(settings.benchmark))
    results = []
    for spec in specs:
        model = on_runtimes(load(spec), image=EXACT, text=settings.text)  # (no image forward runs here)
        model.require("text")
        scored = evaluate_text_retrieval(model, task, batch_size=settings.batch_size)
        runtimes = {"text": model.runtime_names()["text"]}
        result = SuiteResult(model.name, model.space, task.name, tasks=[], missing=[], text_tasks=[scored])
        result.runtimes = runtimes
        results.append(result)
    return results


def report_folder(specs: Sequence[str], out: Path | None) -> Path:
    """Where `latentspace eval` writes: `out`, else the model directory of a single model, else
    artifacts/eval."""
    from latentspace.models.model_dir import is_model_dir

    if out is not None:
        return out
    return Path(specs[0]) if len(specs) == 1 and is_model_dir(specs[0]) else WORKSPACE.eval


def slug(spec: str) -> str:
    """A model spec as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.strip("/"))[-80:]


def write_reports(
    specs: Sequence[str], results: Sequence[SuiteResult], folder: Path, *, prefix: str = "eval", chart: bool = True
) -> None:
    """JSON per model (`eval.json` for a single model with the eval prefix), report.md, and with
    `chart` chart.png."""
    from latentspace.eval.report import write_chart, write_json, write_markdown

    for spec, result in zip(specs, results):
        single = prefix == "eval" and len(specs) == 1
        write_json(result, folder / ("eval.json" if single else f"{prefix}-{slug(spec)}.json"))
    write_markdown(list(results), folder / "report.md")
    if chart:
        write_chart(list(results), folder / "chart.png")
