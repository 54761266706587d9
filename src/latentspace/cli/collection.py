"""`latentspace collection build|search|info|copy`: image libraries as collections, in the embedded
store (a directory) or, with --store postgresql://..., in PostgreSQL with pgvector."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from latentspace.cli.common import console, reports_errors
from latentspace.cli.options import given, settings_from, with_settings
from latentspace.collections.search import SEARCH_ENV_PREFIX, SEARCH_PANELS, SearchSettings
from latentspace.collections.settings import ENV_PREFIX as BUILD_ENV
from latentspace.collections.settings import PANELS, BuildSettings
from latentspace.process_state import environment

collection_app = typer.Typer(no_args_is_help=True, help="Embed an image library into a collection and search it.")

STORE_HELP = (
    "keep the collection in PostgreSQL with pgvector: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (default: the "
    "embedded store, a directory); or set LATENTSPACE_COLLECTION_STORE"
)


def store_option():
    return typer.Option(None, "--store", envvar="LATENTSPACE_COLLECTION_STORE", help=STORE_HELP, show_default=False)


@collection_app.command("build")
@with_settings(BuildSettings, PANELS, env_prefix=BUILD_ENV)
@reports_errors
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
    out: Path | None = typer.Option(
        None,
        help="the collection directory (default artifacts/collections/NAME); with --store, the build's "
        "local work directory (default artifacts/collections/.postgres/...)",
    ),
    store: str | None = store_option(),
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
    **options,
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
    from latentspace.collections import build_in
    from latentspace.collections.store import DEFAULT_ROOT
    from latentspace.progress import progress_for

    directory = out or (None if store else DEFAULT_ROOT / name)
    settings = settings_from(BuildSettings, ctx, given(ctx, options), env_prefix=BUILD_ENV)
    if (
        store is None
        and images is None
        and not (directory / "collection.json").is_file()
        and not (directory / "plan.json").is_file()
    ):
        raise ValueError(f"no collection at {directory} yet: pass --images SOURCE (and --model SPEC)")
    report = build_in(
        name,
        model,
        images,
        store=store,
        out=directory,
        settings=settings,
        progress=progress_for(console),
        log=lambda line: console.print(Text(line)),
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
    )
    if json_output:
        print(json.dumps(report.to_dict()))
    rate = f" ({report.images_per_second:.1f} images/s)" if report.images_embedded else ""
    console.print(
        Text(
            f"collection {report.name} at {_where(report.directory, store)}: {report.items} items; "
            f"this build: {report.added} added, "
            f"{report.changed} changed, {report.removed} removed, {report.unchanged} unchanged; embedded "
            f"{report.images_embedded} images in {report.parts_embedded} parts{rate}"
            + (f", {report.parts_resumed} parts kept from the interrupted build" if report.parts_resumed else "")
            + f"; skipped {report.skipped} (see skipped.jsonl in {report.directory}); search: {report.index}"
            + f"; relevance: {report.relevance}"
        ),
        soft_wrap=True,
    )


@collection_app.command("search")
@with_settings(SearchSettings, SEARCH_PANELS, env_prefix=SEARCH_ENV_PREFIX)
@reports_errors
def collection_search(
    ctx: typer.Context,
    collection: str = typer.Argument(..., help="a collection name (under artifacts/collections) or directory"),
    text: str | None = typer.Argument(None, help="text to search for"),
    image: list[str] | None = typer.Option(
        None,
        metavar="FILE",
        help="search by this image file (repeatable; a weight may lead: '0.5*photo.jpg')",
        show_default=False,
    ),
    like: list[str] | None = typer.Option(
        None, metavar="ID", help="search for items like this one: its id, or its path (repeatable)", show_default=False
    ),
    plus: list[str] | None = typer.Option(
        None,
        metavar="TEXT",
        help="one more text to move toward (repeatable; a weight may lead: '2*sunset')",
        show_default=False,
    ),
    minus: list[str] | None = typer.Option(
        None, metavar="TEXT", help="a text to move away from (repeatable; '0.5*people' weighs -0.5)", show_default=False
    ),
    unlike: list[str] | None = typer.Option(
        None, metavar="ID", help="an item (id or path) to move away from (repeatable)", show_default=False
    ),
    minus_image: list[str] | None = typer.Option(
        None, metavar="FILE", help="an image file to move away from (repeatable)", show_default=False
    ),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="one JSON object per result per line, each with its relevance, whether it is a match (reaches "
        "--min-relevance) and the answer's matches (0: nothing passed, the lines are the nearest items)",
    ),
    store: str | None = store_option(),
    **options,
) -> None:
    """Search a collection by text, by image (--image) or by one of its items (--like).

    Every result has a score (cosine) and a relevance (0..1: the share of generic queries' best
    matches in this collection that it beats). A text query shows only results reaching
    --min-relevance (default: see --help of that option); when none does, it says so and shows the
    nearest items anyway. Image, item and weighted queries are not cut unless --min-relevance is given.

    Several terms make one query: the normalised weighted sum of their unit vectors, each term
    weighing +1 (TEXT, --plus, --like, --image) or -1 (--minus, --unlike, --minus-image), or the
    weight written before it as N* ('--minus 0.5*people'). The items named are left out of the
    results. Example: collection search photos "a beach" --minus people --like 3f9a0c2e11d4b7a5"""
    import json

    from latentspace.collections import Term, open_collection

    terms = [Term("text", text)] if text is not None else []
    for kind, values, sign in (
        ("text", plus, 1.0),
        ("text", minus, -1.0),
        ("like", like, 1.0),
        ("like", unlike, -1.0),
        ("image", image, 1.0),
        ("image", minus_image, -1.0),
    ):
        terms += [_weighted_term(kind, value, sign) for value in values or []]
    if not terms:
        raise ValueError(
            "give a query: a TEXT argument, --image FILE or --like ID (and, to combine several, "
            "--plus/--minus TEXT, --unlike ID, --minus-image FILE)"
        )
    settings = settings_from(SearchSettings, ctx, given(ctx, options), env_prefix=SEARCH_ENV_PREFIX)
    k, min_score, filters, bar = settings.k, settings.min_score, settings.filters, settings.min_relevance
    found = open_collection(collection, store)
    query_model = None
    if any(term.kind != "like" for term in terms):
        from latentspace.models.load import load

        query_model = load(settings.model or found.manifest.model)
    single = terms[0] if len(terms) == 1 and terms[0].weight == 1.0 else None
    if single is not None and single.kind == "like":  # one term: the single-query searches, as ever
        hits = found.search_like(single.value, k, min_score, filters, bar)
    elif single is not None and single.kind == "image":
        hits = found.search_image(query_model, single.value, k, min_score, filters, bar)  # type: ignore[arg-type]
    elif single is not None:
        hits = found.search_text(query_model, single.value, k, min_score, filters, bar)  # type: ignore[arg-type]
    else:
        hits = found.search_terms(query_model, terms, k, min_score, filters, bar)
    if json_output:
        for hit in hits:
            print(json.dumps({**hit.short(), "matches": hits.matches}, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("#", "score", "relevance", "id", "path or url", "caption")
    for rank, hit in enumerate(hits, 1):
        where = hit.path or hit.url or f"{hit.shard}#{hit.key}"
        shown = "-" if hit.relevance is None else f"{hit.relevance:.3f}"
        style = None if hit.match else "dim"
        table.add_row(str(rank), f"{hit.score:.3f}", shown, hit.id, Text(where), Text(hit.caption or ""), style=style)
    if hits and not hits.matches:
        console.print(
            Text(
                "nothing here looks like that: no result reaches the minimum relevance "
                f"({found.relevance_bar(bar)}); the nearest items, below the bar:"
            ),
            soft_wrap=True,
        )
    Console().print(table)
    if not hits:
        console.print("no results" + (" above --min-score" if min_score is not None else ""))


def _weighted_term(kind: str, value: str, sign: float):
    """A term from an option's value: '2*sunset' weighs 2 (times the option's sign), 'sunset' 1.
    Only a number before the first '*' is a weight, so other texts with a '*' stay as they are."""
    from latentspace.collections import Term

    scale = 1.0
    weight, star, rest = value.partition("*")
    if star and rest:
        try:
            scale, value = float(weight), rest.strip()
        except ValueError:
            pass  # not a number before the '*': part of the text
    return Term(kind, Path(value) if kind == "image" else value, sign * scale)  # type: ignore[arg-type]


@collection_app.command("info")
@reports_errors
def collection_info(
    collection: str = typer.Argument(..., help="a collection name (under artifacts/collections) or directory"),
    json_output: bool = typer.Option(False, "--json", help="print as JSON"),
    store: str | None = store_option(),
) -> None:
    """What a collection holds: model, latent space, items, parts, skipped, sources, search kind."""
    import json

    from latentspace.collections import open_collection

    info = open_collection(collection, store).info()
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
        "relevance",
        "updated",
    ):
        out.print(Text(f"{key}: {info[key]}"), soft_wrap=True)
    for source in info["sources"]:
        out.print(Text(f"source: {source['kind']} {source['location']}"), soft_wrap=True)
    for line in _provenance_lines(info.get("provenance")):
        out.print(Text(line), soft_wrap=True)


def _provenance_lines(provenance: dict | None) -> list[str]:
    """`collection info`'s account of what made the vectors (collections/provenance.py)."""
    if provenance is None:
        return ["provenance: unknown (built before latentspace recorded it; the next build records it)"]

    def versions(libraries: dict) -> str:
        return ", ".join(f"{name} {v}" for name, v in sorted(libraries.items()) if v) or "library versions unknown"

    lines = [
        f"query prefix: {provenance['query_prefix']!r}"
        + ("" if provenance["query_prefix"] is not None else " (unknown)"),
        f"document prefix: {provenance['document_prefix']!r}",
    ]
    for group in provenance["made_by"]:
        package = f"latentspace {group['latentspace']}" if group["latentspace"] else "latentspace version unknown"
        lines.append(
            f"made by: {group['runtime']}-{group['precision']}: {group['rows']} rows in {group['parts']} part(s) "
            f"(model {group['model']}, {package}, {versions(group['libraries'])}"
            + (f", preprocessing {group['preprocessing']})" if group["preprocessing"] else ")")
        )
    for fingerprint, steps in provenance["preprocessing"].items():
        described = ", ".join(f"{k} {v}" for k, v in steps.items())
        lines.append(f"preprocessing {fingerprint}: {described}")
    lines.append(f"last build: latentspace {provenance['latentspace']}, {versions(provenance['libraries'])}")
    return lines


def _where(directory, store: str | None) -> str:
    if store is None:
        return str(directory)
    from latentspace.collections.postgres import redact

    return f"{redact(store)} (work directory {directory})"


@collection_app.command("copy")
@reports_errors
def collection_copy(
    src: str = typer.Argument(
        ..., help="the collection to copy: a name or directory, or postgresql://USER@HOST/DB#NAME"
    ),
    dst: str = typer.Argument(
        ...,
        help="where to: a directory, or postgresql://USER@HOST/DB#NAME (without #NAME: the source's name)",
    ),
) -> None:
    """Copy a collection between the embedded store and PostgreSQL (either way); vectors are copied
    bit for bit, and the copy answers searches exactly as the original.

    Example: collection copy photos 'postgresql://me@db.example.com/pictures#photos'"""
    from latentspace.collections.postgres import copy_collection, is_store_url, redact

    def split(where: str) -> tuple[str, str | None]:
        """(collection, store URL or None)."""
        if not is_store_url(where):
            return where, None
        url, _, name = where.rpartition("#") if "#" in where else (where, "", "")
        return name, url

    src_name, src_store = split(src)
    dst_name, dst_store = split(dst)
    if src_store is not None and not src_name:
        raise ValueError(f"name the collection to copy from {redact(src_store)}: add #NAME to the URL")
    dst_name = dst_name or Path(src_name).name
    if src_store is None and dst_store is None:
        raise ValueError("one side of the copy must be postgresql://...#NAME; between directories, use cp -r")
    if dst_store is None:
        from latentspace.collections.store import DEFAULT_ROOT, MANIFEST

        target = Path(dst).expanduser() if "/" in dst else DEFAULT_ROOT / dst
        if (target / MANIFEST).is_file():
            raise ValueError(f"{target} already holds a collection: copy to a new directory")
        dst_name = str(target)
    where = copy_collection(src_name, dst_name, src_store=src_store, dst_store=dst_store, name=dst_name)
    console.print(Text(f"copied collection {src_name} to {where}"), soft_wrap=True)
