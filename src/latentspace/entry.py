"""The `latentspace` command. The plain install is only the remote client, so the command line
(which runs models) says which extra to install instead of failing with an import traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from latentspace.cli import main as run
    except ModuleNotFoundError as e:
        print(
            f"latentspace: the command line needs the model stack, and {e.name!r} is not installed.\n"
            "Install it with:  pip install 'latentspace[all]'   (or the extra you need: local, train, eval, "
            "serve, collections, ray, fast, baselines, pretrained)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    run()
