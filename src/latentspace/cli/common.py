"""What every command shares: the console, quiet libraries, and the one way errors end a command
(`reports_errors`). Options generated from settings are in options.py."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import typer
from rich.console import Console
from rich.text import Text

from latentspace.process_state import environment

console = Console(stderr=True)
Command = TypeVar("Command", bound=Callable[..., Any])


@contextmanager
def quiet_libraries() -> Iterator[None]:
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


def fail(e: BaseException) -> None:
    """End the command with `error: <message>` and exit status 2 (LATENTSPACE_DEBUG=1: the traceback)."""
    if os.environ.get("LATENTSPACE_DEBUG"):
        raise e
    # Plain text, never parsed as rich markup (messages hold brackets and paths), and not
    # hard-wrapped, so a path in it stays whole when copied.
    console.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
    raise typer.Exit(2)


# What a command's failure looks like when the cause is the user's input or the machine: a file
# that is not there, a model of another space, a runtime that cannot run. These become one line;
# anything else is a bug and keeps its traceback.
EXPECTED = (OSError, RuntimeError, ValueError, KeyError)
_OWN_EXITS = (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


def reports_errors(command: Command) -> Command:
    """The command's expected errors (EXPECTED) end it through `fail`; its own exits pass."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _OWN_EXITS:
            raise  # typer.Exit is a RuntimeError: a command's own exit is not a failure
        except EXPECTED as e:
            fail(e)

    return run  # type: ignore[return-value]
