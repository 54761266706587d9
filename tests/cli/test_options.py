"""Options generated from settings: every command's settings are declared once, in a pydantic
model, and the command line follows it (flag, default, help, environment variable, errors)."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field
from typer.main import get_command
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.cli.common import reports_errors
from latentspace.cli.options import given, settings_from, with_settings
from latentspace.collections.search import SEARCH_ENV_PREFIX, SearchSettings
from latentspace.collections.settings import ENV_PREFIX as BUILD_ENV
from latentspace.collections.settings import BuildSettings
from latentspace.eval.evaluate import ENV_PREFIX as EVAL_ENV
from latentspace.eval.evaluate import EvalSettings, TextEvalSettings
from latentspace.options import Flag, env_name, flags


class Toy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Annotated[int, Flag("main")] = Field(3, ge=1, le=10, description="how big")
    names: Annotated[tuple[str, ...], Flag("main", name="name")] = Field((), description="a name (repeatable)")
    unflagged: int = 7  # not an option: only fields with a Flag are


def _toy_app(seen: list) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @with_settings(Toy, {"main": "Main"}, env_prefix="TOY_")
    @reports_errors
    def go(ctx: typer.Context, label: str = typer.Option("x"), **options) -> None:
        seen.append((label, settings_from(Toy, ctx, given(ctx, options), env_prefix="TOY_")))

    return toy


def test_a_setting_is_a_flag_with_its_default_help_and_variable(monkeypatch):
    monkeypatch.delenv("TOY_SIZE", raising=False)
    seen: list = []
    runner = CliRunner()
    assert runner.invoke(_toy_app(seen), ["--label", "a"]).exit_code == 0
    assert seen[-1] == ("a", Toy())  # the model's own defaults
    assert runner.invoke(_toy_app(seen), ["--size", "5", "--name", "p", "--name", "q"]).exit_code == 0
    assert seen[-1][1] == Toy(size=5, names=("p", "q"))
    assert runner.invoke(_toy_app(seen), [], env={"TOY_SIZE": "9"}).exit_code == 0
    assert seen[-1][1].size == 9
    help_text = runner.invoke(_toy_app(seen), ["--help"], env={"COLUMNS": "200"}).output
    assert "how big" in help_text and "TOY_SIZE" in help_text and "--unflagged" not in help_text


def test_a_bad_value_is_named_by_its_flag_and_variable():
    seen: list = []
    result = CliRunner().invoke(_toy_app(seen), ["--size", "11"])
    assert result.exit_code == 2 and "--size: Input should be less than or equal to 10" in result.output
    result = CliRunner().invoke(_toy_app(seen), [], env={"TOY_SIZE": "0"})
    assert "--size (TOY_SIZE): Input should be greater than or equal to 1" in result.output


@pytest.mark.parametrize(
    ("command", "settings", "prefix"),
    [
        (["collection", "build"], BuildSettings, BUILD_ENV),
        (["collection", "search"], SearchSettings, SEARCH_ENV_PREFIX),
        (["eval"], EvalSettings, EVAL_ENV),
        (["eval-text"], TextEvalSettings, EVAL_ENV),
    ],
)
def test_every_command_option_comes_from_its_settings(command, settings, prefix):
    group = get_command(app)
    for word in command:
        group = group.commands[word]  # type: ignore[attr-defined]
    params = {p.name: p for p in group.params}
    for name, (flag, _) in flags(settings).items():
        option = params[name]
        assert flag in option.opts and option.envvar == env_name(name, prefix), name
        field = settings.model_fields[name]
        if not isinstance(field.default, tuple | list):
            assert option.default == field.default, name
