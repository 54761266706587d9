"""The `latentspace` command, one module per command group, in pipeline order:

    data.py        data emoji | wordnet          the corpus and the text task
    training.py    train, quickstart, ablate     training runs
    evaluation.py  eval, eval-text, check-compat numbers about models
    models.py      models                        what a spec resolves to
    serve.py       serve                         the HTTP API (options generated from ServeSettings)
    collection.py  collection build|search|info  image libraries
    duplicates.py  collection duplicates         duplicate groups in a collection

common.py holds what they share: the console, quiet libraries for the length of a command, the
runtime options, and `reports_errors`, the one way an expected error ends a command.
"""

from __future__ import annotations

import sys

import typer

from latentspace.cli import collection, data, evaluation, models, serve, training
from latentspace.cli import duplicates as _duplicates  # noqa: F401 - adds `collection duplicates`
from latentspace.cli.common import quiet_libraries

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train image encoders into a frozen text model's latent space, evaluate and use them.",
)


@app.callback()
def _main(ctx: typer.Context) -> None:
    ctx.with_resource(quiet_libraries())


app.add_typer(data.data_app, name="data")
app.command()(training.train)
app.command("eval")(evaluation.evaluate)
app.command("eval-text")(evaluation.evaluate_text)
app.command("check-compat")(evaluation.check_compat)
app.command("models")(models.models_command)
app.command("serve")(serve.serve)
app.command()(training.ablate)
app.command()(training.quickstart)
app.add_typer(collection.collection_app, name="collection")

__all__ = ["app", "main", "quiet_libraries"]


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
