"""The one way a command ends on an expected error, and what it lets through."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from latentspace.cli.common import reports_errors


def _app(error: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @reports_errors
    def go(name: str = typer.Option("x", help="kept through the decorator")) -> None:
        raise error

    return app


@pytest.mark.parametrize("error", [ValueError("bad [input] at /a/b"), OSError("no such file"), KeyError("k")])
def test_an_expected_error_is_one_line_and_exit_2(error):
    result = CliRunner().invoke(_app(error), ["--name", "y"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and str(error) in result.output and "Traceback" not in result.output


def test_a_commands_own_exit_passes_through():
    result = CliRunner().invoke(_app(typer.Exit(1)), [])  # typer.Exit is a RuntimeError, yet no "error:"
    assert result.exit_code == 1 and "error" not in result.output


def test_an_unexpected_error_keeps_its_traceback():
    result = CliRunner().invoke(_app(ZeroDivisionError("bug")), [])
    assert isinstance(result.exception, ZeroDivisionError)


def test_the_options_survive_the_decorator():
    result = CliRunner().invoke(_app(ValueError("v")), ["--help"])
    assert "kept through the decorator" in result.output
