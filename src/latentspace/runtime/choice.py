"""Which runtime runs a forward: asked for by name, or measured (`auto`) and cached.

`auto` does not guess. It times every candidate the request allows on a probe batch, drops any
whose rows stray below a cosine of 0.999 from PyTorch fp32 on any probe item (also on a second
batch of another shape, so a graph that baked in the first shape is caught), and keeps the
fastest of the rest; PyTorch fp32 is always measured, as the reference and the fall-back. For
images it then times the chosen runtime at a few batch sizes and keeps the smallest within 5% of
the best: on a CPU a bigger batch is not always faster, and a smaller one answers sooner.

A choice is cached per model, request, CPU (features and thread count) and runtime versions,
under a file lock, so processes starting at once (server workers, Ray actors, a training run's
ranks) measure once and all run the same runtime.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from latentspace import atomic
from latentspace.config import PrecisionName, RuntimeName
from latentspace.runtime.builders import CANDIDATES, Forward, RuntimeUnavailable, as_inputs, build_forward, dynamic_dims
from latentspace.runtime.machine import cpu_info, runtime_versions

log = logging.getLogger(__name__)

MIN_COSINE = 0.999
BATCH_SIZES = (4, 8, 16, 32)  # what a chosen image runtime is timed at


class RuntimeSettings(BaseModel):
    """What a caller asks of a forward's runtime. Either part may be `auto`: `auto`/`auto` measures
    every candidate, `auto`/`fp32` the fastest fp32 runtime, `openvino`/`auto` OpenVINO's fastest
    precision; naming both pins one (no measurement of the others). `torch`/`fp32` is PyTorch as
    the model was trained: its vectors are the reference, bit for bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: RuntimeName = "auto"
    precision: PrecisionName = "auto"

    @model_validator(mode="after")
    def _exists(self) -> RuntimeSettings:
        if not self.candidates():
            offered = ", ".join(f"{r}-{p}" for r, p in CANDIDATES)
            raise ValueError(f"there is no {self.runtime} runtime at {self.precision}; offered: {offered}")
        return self

    @property
    def pinned(self) -> bool:
        return "auto" not in (self.runtime, self.precision)

    def candidates(self) -> list[tuple[str, str]]:
        return [(r, p) for r, p in CANDIDATES if self.runtime in ("auto", r) and self.precision in ("auto", p)]

    def __str__(self) -> str:
        return f"{self.runtime}-{self.precision}" if self.pinned else f"{self.runtime}/{self.precision}"


EXACT = RuntimeSettings(runtime="torch", precision="fp32")
AUTO = RuntimeSettings()

# Commands' settings name each forward's runtime in two fields, `<forward>_runtime` and
# `<forward>_precision` (serve, collection build, eval, eval-text): one description of each, here.
_RUNTIME_HELP = {
    "image": "runtime for image forwards: auto (the fastest measured on this machine within cosine 0.999 of "
    "PyTorch fp32), torch, openvino or onnxruntime",
    "text": "runtime for text forwards: auto (measured, as for images), torch, openvino or onnxruntime; torch at "
    "fp32 gives the text model's own vectors, bit for bit",
}


def runtime_field(forward: str, default: str = "auto") -> Any:
    """The `<forward>_runtime` field of a command's settings."""
    return Field(default, description=_RUNTIME_HELP[forward])


def precision_field(forward: str, default: str = "auto") -> Any:
    """The `<forward>_precision` field of a command's settings."""
    return Field(default, description=f"precision of {forward} forwards: auto (measured), fp32, bf16 or int8")


class ForwardRuntimes:
    """For settings with image_runtime/image_precision and text_runtime/text_precision fields: the
    two as RuntimeSettings."""

    @property
    def image(self) -> RuntimeSettings:
        return forward_settings(self, "image")

    @property
    def text(self) -> RuntimeSettings:
        return forward_settings(self, "text")


def forward_settings(settings: object, forward: str) -> RuntimeSettings:
    """The RuntimeSettings of a command's `<forward>_runtime` and `<forward>_precision`, or a
    ValueError that names the forward when the two do not go together."""
    try:
        return RuntimeSettings(
            runtime=getattr(settings, f"{forward}_runtime"), precision=getattr(settings, f"{forward}_precision")
        )
    except ValueError as e:
        problem = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise ValueError(f"{forward} forwards: {problem.removeprefix('Value error, ')}") from None


@dataclass
class Measurement:
    runtime: str
    precision: str
    items_per_s: float | None = None
    min_cosine: float | None = None
    skipped: str | None = None  # why it was not measured or not eligible

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def describe(self) -> str:
        if self.items_per_s is None or self.min_cosine is None:  # not run, or failed on the second shape
            return self.skipped or ""
        return f"{self.items_per_s:.1f}/s, cosine {self.min_cosine:.5f}" + (
            f" ({self.skipped})" if self.skipped else ""
        )


@dataclass
class Choice:
    """The runtime a forward runs on, why, and (for images) how many items a forward takes."""

    runtime: str
    precision: str
    reason: str
    measurements: list[Measurement] = field(default_factory=list)
    cached: bool = False
    batch: int | None = None  # items per forward that run best (None: the caller's own setting)

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def fell_back(self, why: str) -> None:
        """From now on this forward runs on PyTorch fp32 (a runtime failed to build or to run)."""
        self.reason = f"fell back to PyTorch fp32: {self.name} {why}"
        self.runtime, self.precision = "torch", "fp32"

    def to_json(self) -> dict:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "reason": self.reason,
            "batch": self.batch,
            "measurements": [asdict(m) for m in self.measurements],
        }

    @classmethod
    def from_json(cls, d: dict) -> Choice:
        return cls(
            d["runtime"],
            d["precision"],
            d["reason"],
            [Measurement(**m) for m in d["measurements"]],
            cached=True,
            batch=d["batch"],
        )

    def describe_measurements(self) -> str:
        """Every candidate in one line: its rate and cosine, and why it was not eligible."""
        return "; ".join(f"{m.name}: {m.describe()}" for m in self.measurements)


Builder = Callable[[torch.nn.Module, object, str, str], Forward]


def _items_per_s(
    forward: Forward, probe: tuple[torch.Tensor, ...], repeats: int, min_seconds: float = 0.4
) -> tuple[float, torch.Tensor]:
    """Items/s of `forward` on `probe`: the best of at least `repeats` timed runs, and of as many
    more as fit in `min_seconds` (a small model's few-millisecond runs are noisy on a shared
    machine; one best-of-many is not). Also the rows of the first run."""
    rows = forward(*probe)  # warm-up (first calls compile / allocate)
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeats or (spent < min_seconds and runs < 50):
        started = time.perf_counter()
        forward(*probe)
        took = time.perf_counter() - started
        best, spent, runs = min(best, took), spent + took, runs + 1
    return len(probe[0]) / best, rows


def calibrate(
    module: torch.nn.Module,
    probe,
    *,
    candidates: Sequence[tuple[str, str]] = CANDIDATES,
    min_cosine: float = MIN_COSINE,
    repeats: int = 2,
    build: Builder = build_forward,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Choice:
    """Time every candidate on `probe` and choose the fastest whose rows keep a cosine of at least
    `min_cosine` to PyTorch fp32 on every probe item; then, for images, the batch size (see the
    module docstring). With one candidate, it is not timed against the others: it is taken
    (and checked only for building and running)."""
    cpu = cpu_info()
    inputs = as_inputs(probe)
    # A second, smaller input of another shape: a runtime whose graph kept a size of the first
    # (a traced constant) fails or strays here, and is not chosen.
    other = other_shape(inputs)
    module = module.eval()
    reference_forward = build_forward(module, probe, "torch", "fp32")
    reference = reference_forward(*inputs)
    other_reference = reference_forward(*other)
    # Timed on a batch the size forwards will run at: a small model's probe batch is over in a few
    # milliseconds, where fixed costs decide the ranking, so its images are repeated to 32.
    timed = _timing_batch(inputs, reference_forward)
    reference_speed, _ = _items_per_s(reference_forward, timed, repeats)
    torch_fp32 = Measurement("torch", "fp32", reference_speed, 1.0)
    measurements = [torch_fp32]
    if ("torch", "fp32") not in candidates:
        torch_fp32.skipped = "not asked for (measured as the reference)"
    forwards: dict[str, Forward] = {"torch-fp32": reference_forward}
    for runtime, precision in candidates:
        if (runtime, precision) == ("torch", "fp32"):
            continue
        m = Measurement(runtime, precision)
        measurements.append(m)
        if precision == "bf16" and not cpu.native_bf16 and len(candidates) > 1:
            m.skipped = "no native bf16 on this CPU (emulated bf16 is slower than fp32)"
            continue
        try:
            forward = build(module, probe, runtime, precision)
            rows = forward(*inputs)
            m.items_per_s, _ = _items_per_s(forward, timed, repeats)
            other_rows = forward(*other).float()
        except RuntimeUnavailable as e:
            m.skipped = f"runtime missing: {e}"
            log.info("runtime %s skipped: %s", m.name, e)
            continue
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this model is not a choice
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            m.skipped = f"failed: {type(e).__name__}: {first_line[:160]}"
            log.info("runtime %s skipped: %s", m.name, m.skipped)
            continue
        m.min_cosine = min(
            float(F.cosine_similarity(rows.float(), reference.float(), dim=-1).min()),
            float(F.cosine_similarity(other_rows, other_reference.float(), dim=-1).min()),
        )
        if m.min_cosine < min_cosine and len(candidates) > 1:
            m.skipped = f"cosine {m.min_cosine:.5f} to PyTorch fp32 is below {min_cosine}"
        forwards[m.name] = forward
    eligible = [m for m in measurements if m.skipped is None]
    if eligible:
        best = max(eligible, key=lambda m: m.items_per_s or 0.0)
        reason = (
            f"fastest of {', '.join(f'{m.name} {m.items_per_s:.1f}/s' for m in eligible)} on {cpu.summary()} "
            f"(probe batch {len(inputs[0])}, cosine >= {min_cosine} to PyTorch fp32)"
            if len(candidates) > 1
            else f"asked for, {best.items_per_s:.1f}/s on {cpu.summary()}"
        )
    else:
        best = torch_fp32
        reason = "fell back to PyTorch fp32: " + "; ".join(f"{m.name} {m.skipped}" for m in measurements[1:])
    forward = forwards[best.name]
    by_batch = _batch_speeds(forward, inputs[0], batch_sizes) if len(inputs) == 1 and batch_sizes else {}
    batch = min(b for b, speed in by_batch.items() if speed >= 0.95 * max(by_batch.values())) if by_batch else None
    if by_batch:
        reason += "; batches of " + ", ".join(f"{b}: {v:.1f}/s" for b, v in by_batch.items()) + f" -> {batch}"
    return Choice(best.runtime, best.precision, reason, measurements, batch=batch)


def _timing_batch(inputs: tuple[torch.Tensor, ...], forward: Forward, fast: float = 0.05) -> tuple[torch.Tensor, ...]:
    """The probe, or for images whose forward takes under `fast` seconds, the probe repeated to 32."""
    if len(inputs) != 1 or inputs[0].dim() != 4 or len(inputs[0]) >= 32:
        return inputs
    started = time.perf_counter()
    forward(*inputs)
    if time.perf_counter() - started >= fast:
        return inputs
    pixels = inputs[0]
    return (pixels.repeat((32 + len(pixels) - 1) // len(pixels), 1, 1, 1)[:32],)


def other_shape(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The probe cut to 3 items, and token ids and their mask also to 60% of the length (a
    different shape is all this input is for: the same ids go to the reference and the candidate)."""
    cut = tuple(x[:3] for x in inputs)
    if dynamic_dims(cut[0]) == 2:
        length = max(2, int(cut[0].shape[1] * 0.6))
        cut = tuple(x[:, :length].contiguous() for x in cut)
    return cut


def _batch_speeds(forward: Forward, probe: torch.Tensor, sizes: Sequence[int]) -> dict[int, float]:
    """Items/s of `forward` at each batch size (the probe repeated to fill it)."""
    speeds = {}
    for size in sizes:
        batch = probe.repeat((size + len(probe) - 1) // len(probe), 1, 1, 1)[:size]
        speeds[size], _ = _items_per_s(forward, (batch,), repeats=1, min_seconds=0.2)
    return speeds


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentspace" / "runtimes"


def calibration_key(model_fingerprint: str, probe, candidates: Sequence[tuple[str, str]]) -> str:
    """What a cached choice depends on: the model, the probe's shapes, the CPU and the runtimes."""
    cpu = cpu_info()
    blob = json.dumps(
        {
            "model": model_fingerprint,
            "probe": [list(x.shape) for x in as_inputs(probe)],
            "cpu": cpu.model,
            "flags": sorted(cpu.flags),
            "threads": torch.get_num_threads(),
            "runtimes": runtime_versions(),
            "candidates": list(candidates),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def choose(
    module: torch.nn.Module,
    probe,
    *,
    model_fingerprint: str,
    settings: RuntimeSettings = AUTO,
    cache_dir: Path | None = None,
    build: Builder = build_forward,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Choice:
    """The choice for this module and request on this machine, from the cache when it has one.
    Concurrent callers (worker processes) wait on a file lock, so only one measures and all
    take the same choice."""
    candidates = settings.candidates()
    batch_sizes = batch_sizes if len(as_inputs(probe)) == 1 else ()
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{calibration_key(model_fingerprint, probe, candidates)}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                return Choice.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable runtime calibration %s", path)
        choice = calibrate(module, probe, candidates=candidates, build=build, batch_sizes=batch_sizes)
        atomic.write_text(path, json.dumps(choice.to_json(), indent=1))
        return choice


RUNTIME_NAMES: tuple[str, ...] = get_args(RuntimeName)
PRECISION_NAMES: tuple[str, ...] = get_args(PrecisionName)
