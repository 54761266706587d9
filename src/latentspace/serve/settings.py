"""Server settings: one typed object built by `latentspace serve` from flags, files and env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

API_KEYS_ENV = "LATENTSPACE_API_KEYS"  # comma-separated keys


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field([], description="model specs: DIR or NAME=DIR (NAME is what clients pass as `model`)")
    collections: list[str] = Field([], description="collections to search: DIR, NAME=DIR, or a NAME under "
                                                   "artifacts/collections (latentspace collection build)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes; each loads every model")
    api_keys: tuple[str, ...] = Field((), description="accepted bearer keys; empty = no auth")
    cors_origins: tuple[str, ...] = Field((), description="origins allowed by CORS; empty = CORS off")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="request body cap (413 above it)")
    max_items: int = Field(256, ge=1, description="texts or images per request")
    max_pixels: int = Field(40_000_000, ge=1, description="per-image pixel cap, checked from the header before decoding")
    max_batch_images: int = Field(32, ge=1, description="images per forward")
    max_batch_tokens: int = Field(16384, ge=1, description="text tokens per forward")
    max_queue_items: int = Field(1024, ge=1, description="items waiting per model before 429")
    batch_wait_ms: float | None = Field(
        None, ge=0, description="wait this long for more requests before a forward; None = adaptive (only under "
                                "concurrent load, at most 15% of the last forward and 20 ms); 0 = never")
    decode_threads: int = Field(max(2, os.cpu_count() or 2), ge=1, description="threads decoding and resizing images")
    image_backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="runtime for image forwards; auto = the fastest measured on this machine whose output "
                            "stays within cosine 0.999 of PyTorch fp32 (serve/backends.py)")
    image_precision: Literal["fp32", "bf16", "int8"] | None = Field(
        None, description="with an explicit backend: its precision (default fp32); auto measures it")
    text_backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="runtime for text forwards, chosen like image_backend; torch keeps served text vectors "
                            "bit-identical to local mode's")
    text_precision: Literal["fp32", "bf16", "int8"] | None = Field(
        None, description="with an explicit text backend: its precision (default fp32)")
    backend_cache_dir: str | None = Field(None, description="where auto's calibrations are kept; None = "
                                                            "$XDG_CACHE_HOME/latentspace/backends")
    allow_urls: bool = Field(False, description="let /v1/embedding/image fetch `urls` server-side")
    url_allowed_hosts: tuple[str, ...] = Field((), description="hostnames exempt from the public-address check")
    url_max_bytes: int = Field(20 * 2**20, ge=1)
    url_timeout_s: float = Field(10.0, gt=0, description="connect and read timeout for remote images")
    url_max_redirects: int = Field(3, ge=0)
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> "ServeSettings":
        if not self.models and not self.collections:
            raise ValueError("nothing to serve: give at least one --model or --collection")
        if self.max_queue_items < self.max_items:
            raise ValueError(f"max_queue_items ({self.max_queue_items}) must be at least max_items ({self.max_items}), "
                             "or a full-size request could never be queued")
        from latentspace.serve.backends import CANDIDATES

        for kind, backend, precision in (("image", self.image_backend, self.image_precision),
                                         ("text", self.text_backend, self.text_precision)):
            if backend == "auto":
                if precision is not None:
                    raise ValueError(f"with {kind}_backend auto the precision is measured too; name a backend "
                                     "(torch, openvino, onnxruntime) to pin a precision")
            elif (backend, precision or "fp32") not in CANDIDATES:
                offered = ", ".join(f"{b}-{p}" for b, p in CANDIDATES)
                raise ValueError(f"there is no {backend} backend at {precision} for {kind}s; offered: {offered}")
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
            raise ValueError("API keys must be at least 8 characters with no whitespace "
                             "(a key is not echoed here, so check the flag, file and environment)")
    return tuple(dict.fromkeys(found))
