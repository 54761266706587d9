"""`latentspace collection duplicates`: groups of exact copies, near copies and similar items.

Registered on the collection group (cli/collection.py's `collection_app`) when cli/__init__.py
imports this module; the work is latentspace.collections.duplicates'.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

from latentspace.cli.collection import collection_app, store_option
from latentspace.cli.common import console, reports_errors
from latentspace.cli.options import given, settings_from, with_settings
from latentspace.collections.duplicates import DUPLICATES_ENV_PREFIX, DUPLICATES_PANELS, DuplicateSettings


@collection_app.command("duplicates")
@with_settings(DuplicateSettings, DUPLICATES_PANELS, env_prefix=DUPLICATES_ENV_PREFIX)
@reports_errors
def collection_duplicates(
    ctx: typer.Context,
    collection: str = typer.Argument(..., help="a collection name (under artifacts/collections) or directory"),
    json_output: bool = typer.Option(False, "--json", help="print the groups as one JSON object"),
    store: str | None = store_option(),
    **options,
) -> None:
    """Group a collection's duplicates at three levels: exact (the same decoded pixels), near (the
    same picture re-encoded, resized, slightly cropped or colour-shifted) and similar (the same
    scene or subject).

    Pairs come from each item's k nearest neighbours (--k); near and exact pairs are confirmed by
    reading both images again and comparing their pixels. The default thresholds were measured
    on planted copies (docs/collections.md)."""
    import json

    from latentspace.collections import open_collection
    from latentspace.collections.duplicates import find_duplicates

    settings = settings_from(DuplicateSettings, ctx, given(ctx, options), env_prefix=DUPLICATES_ENV_PREFIX)
    report = find_duplicates(open_collection(collection, store), settings)
    if json_output:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    out = Console()
    for group in report.groups:
        out.print(Text(f"{group.level} ({len(group.members)}):", style="bold"))
        for member in group.members:
            where = member.get("path") or member.get("url") or f"{member.get('shard')}#{member.get('key')}"
            out.print(Text(f"  {member['id']}  {where}"), soft_wrap=True)
    counts = report.counts()
    summary = ", ".join(f"{counts[level]['groups']} {level}" for level in counts)
    console.print(
        Text(
            f"{report.collection}: {report.items} items, groups: {summary}"
            + (
                f"; {report.unverified} candidate pairs could not be read again (URLs, piped shards or "
                "changed files), so at most similar"
                if report.unverified
                else ""
            )
        ),
        soft_wrap=True,
    )
