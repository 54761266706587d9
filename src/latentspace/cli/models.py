"""`latentspace models`: what model specs resolve to."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text

from latentspace.cli.common import reports_errors
from latentspace.models.load import spec_forms_help


@reports_errors
def models_command(
    specs: list[str] = typer.Argument(..., help="model specs to resolve"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object per spec"),
) -> None:
    # The help text is the docstring set below, written from the loader's table of spec forms.
    import json

    from latentspace.models.load import load

    out = Console()
    for spec in specs:
        info = {"spec": spec, **load(spec).describe()}
        if json_output:
            print(json.dumps(info))
            continue
        out.print(Text(spec, style="bold"))
        for key in ("kind", "name", "space", "dimension", "modalities", "max_tokens", "task_types"):
            if key in info:
                value = ", ".join(map(str, info[key])) if isinstance(info[key], list) else info[key]
                out.print(Text(f"  {key}: {value}"), soft_wrap=True)


# "\b" keeps the table's line breaks (click's marker for a paragraph not to rewrap).
models_command.__doc__ = (
    "Load each model spec and print what it resolves to: kind, latent space, dimension, modalities.\n\n"
    f"\b\nSpec forms:\n{spec_forms_help()}"
)
