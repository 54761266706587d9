"""Typer options generated from a settings model (latentspace.options), and the settings built
back from what the user gave.

`with_settings(Settings, panels, env_prefix)` adds one option per flagged field of `Settings`
to a command that takes `**settings`: its flag, help, default and environment variable come from
the field. `settings_from(Settings, ctx, given)` builds the model from the options the user
actually gave (command line or environment), so the model's own defaults apply to the rest, and
turns a validation error into the user's words: each problem named by its flag, and by its
environment variable when it came from there.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from latentspace.options import ENV_PREFIX, env_name, flags

Command = TypeVar("Command", bound=Callable[..., Any])
Settings = TypeVar("Settings", bound=BaseModel)

# An option that is not a setting but is listed with them, after the setting `after`:
# name -> (after, annotation, default, help). Its flag is the name with dashes.
Extras = dict[str, tuple[str, Any, Any, str]]


def settings_parameters(
    settings: type[BaseModel],
    panels: dict[str, str],
    *,
    env_prefix: str = ENV_PREFIX,
    extras: Extras | None = None,
    no_env: tuple[str, ...] = (),
) -> list[inspect.Parameter]:
    """One keyword parameter (a typer Option) per flagged field, panel by panel in `panels`' order
    (typer lists the panels in the order their first options come)."""
    params: list[inspect.Parameter] = []

    def add(name: str, annotation: Any, option: Any) -> None:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    named = flags(settings)
    for group, panel in panels.items():
        for name, (flag, meta) in named.items():
            if meta.group != group:
                continue
            field = settings.model_fields[name]
            annotation, default, decls, text = field.annotation, field.default, [flag], field.description or ""
            if typing.get_origin(annotation) in (list, tuple):
                # A repeatable flag; from the environment click splits the values on whitespace.
                annotation, default = list[typing.get_args(annotation)[0]] | None, None
                if name not in no_env:
                    text += " (space-separated in the env var)"
            if meta.short:
                decls.append(meta.short)
            envvar = None if name in no_env else env_name(name, env_prefix)
            add(name, annotation, typer.Option(default, *decls, help=text, envvar=envvar, rich_help_panel=panel))
            for extra, (after, extra_type, extra_default, extra_text) in (extras or {}).items():
                if after == name:
                    add(
                        extra,
                        extra_type,
                        typer.Option(
                            extra_default,
                            "--" + extra.replace("_", "-"),
                            help=extra_text,
                            envvar=env_name(extra, env_prefix),
                            rich_help_panel=panel,
                        ),
                    )
    return params


def with_settings(
    settings: type[BaseModel],
    panels: dict[str, str],
    *,
    env_prefix: str = ENV_PREFIX,
    extras: Extras | None = None,
    no_env: tuple[str, ...] = (),
) -> Callable[[Command], Command]:
    """Give a command that takes `**settings` one option per setting (after its own parameters)."""

    def decorate(command: Command) -> Command:
        own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
        generated = settings_parameters(settings, panels, env_prefix=env_prefix, extras=extras, no_env=no_env)
        command.__signature__ = inspect.Signature(own + generated)  # type: ignore[attr-defined]
        return command

    return decorate


def given(ctx: typer.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave on the command line or in the environment (not defaults)."""
    return {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")  # type: ignore[union-attr]
    }


def settings_from(
    settings: type[Settings], ctx: typer.Context, values: dict[str, Any], *, env_prefix: str = ENV_PREFIX
) -> Settings:
    """`settings(**values)`, or a ValueError naming each problem by its flag (and variable)."""
    try:
        return settings(**values)
    except ValidationError as e:
        raise ValueError(describe_error(e, settings, ctx, env_prefix=env_prefix)) from None


def describe_error(
    error: ValidationError, settings: type[BaseModel], ctx: typer.Context, *, env_prefix: str = ENV_PREFIX
) -> str:
    """A validation error in the user's words (`--port (LATENTSPACE_PORT): Input should be less than
    or equal to 65535`), without pydantic's links."""
    named = flags(settings)
    problems = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        field = problem["loc"][0] if problem["loc"] else None
        if field not in named:  # a rule across settings names them in its message
            problems.append(message)
            continue
        source = ctx.get_parameter_source(str(field))
        where = f" ({env_name(str(field), env_prefix)})" if source is not None and source.name == "ENVIRONMENT" else ""
        problems.append(f"{named[str(field)][0]}{where}: {message}")
    return "; ".join(problems)
