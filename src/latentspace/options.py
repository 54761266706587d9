"""Settings that become command-line options: the one place a setting is declared.

A command's settings are a pydantic model whose fields carry a `Flag` (in `Annotated[...]`): the
field gives the name, type, default, limits and description; the Flag says which help panel
lists it and, where it differs from the field's name, what the flag is called. The command line
(latentspace.cli.options) generates one option per flagged field, with an environment variable
named `<prefix><FIELD>`, so a setting added to the model is on the command line with no edit
there, and its Python default is its command-line default. Lives below every package that
declares settings (serve, collections, eval), since all of them use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

ENV_PREFIX = "LATENTSPACE_"


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line: the help panel it is listed in (a key of the
    command's panel titles) and, where the flag is not the field's name with dashes, its name. A
    list setting is given by repeating a flag named for one item (`--model A --model B` fill
    `models`), hence `name`."""

    group: str
    name: str | None = None  # without the leading dashes
    short: str | None = None  # e.g. "-m"


def flags(settings: type[BaseModel]) -> dict[str, tuple[str, Flag]]:
    """Each flagged field's flag (`--max-items`) and its `Flag`, by field name, in declaration order."""
    found = {}
    for name, field in settings.model_fields.items():
        flag = next((m for m in field.metadata if isinstance(m, Flag)), None)
        if flag is not None:
            found[name] = ("--" + (flag.name or name.replace("_", "-")), flag)
    return found


def env_name(field: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that sets `field`: LATENTSPACE_<FIELD>, or another prefix's."""
    return prefix + field.upper()
