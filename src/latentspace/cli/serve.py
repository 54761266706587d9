"""`latentspace serve`: its options are generated from ServeSettings."""

from __future__ import annotations

from pathlib import Path

import typer

from latentspace.cli.common import console, reports_errors
from latentspace.cli.options import given as given_options
from latentspace.cli.options import settings_from, with_settings
from latentspace.process_state import environment
from latentspace.serve.settings import GROUPS, ServeSettings, read_api_keys

# -- serve: its options are generated from ServeSettings -----------------------------------------
# Each ServeSettings field becomes one option: its flag, default and help come from the field and
# its Flag (serve/settings.py), and LATENTSPACE_<FIELD> sets it from the environment. A setting
# added there is on the command line with no edit here.

# The few options that are not settings: they feed one (keys from a file, the body cap in MiB) or
# go to uvicorn. Each is named like a setting (--max-body-mb, LATENTSPACE_MAX_BODY_MB) and listed
# right after the setting given here.
_SERVE_INPUTS = {
    "api_key_file": ("api_keys", Path | None, None, "file with accepted bearer keys, one per line (# comments)"),
    "max_body_mb": ("max_body_bytes", float | None, None, "the request body cap in MiB instead"),
    "log_level": ("port", str, "info", "uvicorn's log level: critical, error, warning, info, debug or trace"),
}


@with_settings(ServeSettings, GROUPS, extras=_SERVE_INPUTS, no_env=("api_keys",))
@reports_errors
def serve(ctx: typer.Context, **options) -> None:
    """Serve models over HTTP with Nomic's embedding API (and an OpenAI-style /v1/embeddings).

    Every option can also be set by the environment variable shown with it.
    """
    # Before torch loads: OpenMP threads that spin between ops would take the cores that parse
    # requests, decode images and tokenise (see docs/serving.md). An explicit setting is respected.
    ctx.with_resource(environment({"OMP_WAIT_POLICY": "PASSIVE"}, defaults_only=True))
    from latentspace.serve.run import run_server

    inputs = {name: options.pop(name) for name in _SERVE_INPUTS}
    # Only what was given on the command line or in the environment goes to ServeSettings, so its
    # own defaults apply to the rest (the option defaults only show them in --help).
    given = given_options(ctx, options)
    if inputs["max_body_mb"] is not None:
        if "max_body_bytes" in given:
            raise ValueError("give --max-body-mb or --max-body-bytes, not both")
        given["max_body_bytes"] = int(inputs["max_body_mb"] * 2**20)
    given["api_keys"] = read_api_keys(given.get("api_keys"), inputs["api_key_file"])
    settings = settings_from(ServeSettings, ctx, given)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no auth (pass --api-key to require one)"
    console.print(
        f"serving {', '.join(settings.models + settings.collections)} on "
        f"http://{settings.host}:{settings.port} — {auth}; "
        f"remote image URLs {'on' if settings.allow_urls else 'off'}"
    )
    run_server(settings, log_level=inputs["log_level"])
