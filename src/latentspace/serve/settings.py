"""Server settings: one typed object built by `latentspace serve` from flags, files and env.

`ServeSettings` is the one declaration of every setting: its name, default, limits and
description. `latentspace serve` generates its options from these fields (flag, help text,
default, environment variable LATENTSPACE_<NAME>), so a setting added here is on the command
line without further edits; the `Flag` each field carries says where its flag is listed in
`serve --help` and, where it differs from the field's name, what the flag is called (the
machinery is latentspace.options, shared with the other commands' settings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from latentspace.data.fetch import DEFAULT_POLICY
from latentspace.options import ENV_PREFIX, Flag, env_name
from latentspace.options import flags as settings_flags
from latentspace.runtime.choice import (
    ForwardRuntimes,
    PrecisionName,
    RuntimeName,
    precision_field,
    runtime_field,
)

API_KEYS_ENV = ENV_PREFIX + "API_KEYS"  # comma-separated keys
# Each setting's environment variable is LATENTSPACE_ + its name in capitals (options.env_name).

# The panels of `latentspace serve --help`, in the order they are listed.
GROUPS = {
    "server": "Server",
    "models": "Models",
    "limits": "Limits",
    "security": "Security",
    "performance": "Performance",
}


def flags() -> dict[str, tuple[str, Flag]]:
    """Each setting's flag (`--max-items`) and its `Flag`, by field name, in declaration order."""
    return settings_flags(ServeSettings)


class ServeSettings(ForwardRuntimes, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to serve
    models: Annotated[list[str], Flag("models", name="model", short="-m")] = Field(
        [],
        description="model to serve: SPEC or NAME=SPEC, NAME being what clients pass as `model` (repeat for "
        "several); any model spec (`latentspace models --help`): a latentspace model dir, Nomic's "
        "text or vision dir, a text model dir, builtin:all-MiniLM-L6-v2, hf-clip:DIR",
    )
    collections: Annotated[list[str], Flag("models", name="collection", short="-c")] = Field(
        [],
        description="collection to search: DIR, NAME=DIR, a NAME under artifacts/collections (`latentspace "
        "collection build`), or NAME=postgresql://USER@HOST/DB (a collection in PostgreSQL); repeatable; the page at "
        "/ searches it",
    )

    # Where to listen
    host: Annotated[str, Flag("server")] = Field("127.0.0.1", description="interface to bind (0.0.0.0 for all)")
    port: Annotated[int, Flag("server")] = Field(8000, ge=0, le=65535, description="TCP port to listen on")

    # Who may call, and what the server may fetch
    api_keys: Annotated[tuple[str, ...], Flag("security", name="api-key")] = Field(
        (),
        description="accepted bearer key (repeatable); also read from --api-key-file and from "
        f"{API_KEYS_ENV} (comma-separated); none = no auth",
    )
    cors_origins: Annotated[tuple[str, ...], Flag("security", name="cors-origin")] = Field(
        (), description="origin allowed by CORS (repeatable); none = CORS off"
    )
    allow_urls: Annotated[bool, Flag("security")] = Field(
        False,
        description="let clients send image URLs for the server to fetch (public addresses only, checked "
        "on every redirect)",
    )
    url_allowed_hosts: Annotated[tuple[str, ...], Flag("security", name="url-allowed-host")] = Field(
        (), description="hostname exempt from the public-address check (repeatable)"
    )

    # How much one request, one client and one remote image may take
    max_body_bytes: Annotated[int, Flag("limits")] = Field(
        32 * 2**20, ge=1024, description="request body cap in bytes, 413 above it (or give --max-body-mb)"
    )
    max_items: Annotated[int, Flag("limits")] = Field(256, ge=1, description="texts or images per request")
    max_pixels: Annotated[int, Flag("limits")] = Field(
        40_000_000, ge=1, description="per-image pixel cap, checked from the header before decoding"
    )
    max_queue_items: Annotated[int, Flag("limits")] = Field(
        1024, ge=1, description="items waiting per model before answering 429"
    )
    retry_after_s: Annotated[int, Flag("limits")] = Field(
        1, ge=1, description="seconds in the Retry-After header of 429 and 503 answers"
    )
    url_max_bytes: Annotated[int, Flag("limits")] = Field(
        DEFAULT_POLICY.max_bytes, ge=1, description="largest remote image fetched, in bytes"
    )
    url_timeout_s: Annotated[float, Flag("limits")] = Field(
        DEFAULT_POLICY.read_timeout, gt=0, description="connect and read timeout for a remote image, in seconds"
    )
    url_max_redirects: Annotated[int, Flag("limits")] = Field(
        DEFAULT_POLICY.max_redirects, ge=0, description="redirects followed per remote image"
    )

    # How forwards are run
    workers: Annotated[int, Flag("performance")] = Field(
        1, ge=1, description="uvicorn worker processes; each loads every model"
    )
    max_batch_images: Annotated[int, Flag("performance")] = Field(32, ge=1, description="images per forward")
    max_batch_tokens: Annotated[int, Flag("performance")] = Field(16384, ge=1, description="text tokens per forward")
    batch_wait_ms: Annotated[float | None, Flag("performance")] = Field(
        None,
        ge=0,
        description="wait this long for more requests before a forward; unset = adaptive (only under "
        "concurrent load, at most 15% of the last forward and 20 ms); 0 = never",
    )
    decode_threads: Annotated[int, Flag("performance")] = Field(
        max(2, os.cpu_count() or 2),
        ge=1,
        description="threads decoding and resizing images (default: the CPU count, at least 2)",
    )
    image_runtime: Annotated[RuntimeName, Flag("performance")] = runtime_field("image")
    image_precision: Annotated[PrecisionName, Flag("performance")] = precision_field("image")
    text_runtime: Annotated[RuntimeName, Flag("performance")] = runtime_field("text")
    text_precision: Annotated[PrecisionName, Flag("performance")] = precision_field("text")
    runtime_cache_dir: Annotated[str | None, Flag("performance", name="runtime-cache")] = Field(
        None, description="where auto keeps its measurements; unset = $XDG_CACHE_HOME/latentspace/runtimes"
    )

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServeSettings:
        if not self.models and not self.collections:
            raise ValueError("nothing to serve: give at least one --model or --collection")
        if self.max_queue_items < self.max_items:
            raise ValueError(
                f"max_queue_items ({self.max_queue_items}) must be at least max_items ({self.max_items}), "
                "or a full-size request could never be queued"
            )
        _ = self.image, self.text  # a runtime and precision that do not go together fail here
        return self


def read_api_keys(keys: list[str] | None, key_file: Path | None, env: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from flags, a file (one per line, # comments) and LATENTSPACE_API_KEYS, de-duplicated."""
    env = os.environ if env is None else env
    found = list(keys or [])
    if key_file is not None:
        try:
            lines = Path(key_file).expanduser().read_text().splitlines()
        except OSError as e:
            raise ValueError(f"cannot read the API key file {key_file}: {e.strerror or e}") from e
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    found += [k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip()]
    for key in found:
        if len(key) < 8 or any(c.isspace() for c in key):
            raise ValueError(
                "API keys must be at least 8 characters with no whitespace "
                "(a key is not echoed here, so check the flag, file and environment)"
            )
    return tuple(dict.fromkeys(found))


__all__ = ["API_KEYS_ENV", "GROUPS", "Flag", "ServeSettings", "env_name", "flags", "read_api_keys"]
