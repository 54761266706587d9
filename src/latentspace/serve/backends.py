"""Runtimes for the model forwards, and the measured choice between them (`--image-backend auto`,
`--text-backend auto`).

On a CPU the forward is the whole cost of a request, so the runtime it runs on is the lever. The
candidates, for the image forward (pixels -> rows) and the text forward (token ids and their
mask -> rows) alike:

    torch        fp32   the model as trained (the reference every other one is checked against)
    torch        int8   dynamic int8 quantisation of the Linear layers (weights int8, activations
                        quantised per batch); helps transformers, not ConvNets
    openvino     fp32   OpenVINO's compiled graph (LATENCY hint: one inference uses every core)
    openvino     bf16   the same in bfloat16: fast where the CPU has native bf16 (AVX512-BF16, AMX),
                        emulated (slow) elsewhere
    onnxruntime  fp32   ONNX Runtime on the exported graph
    onnxruntime  int8   ONNX Runtime with dynamically quantised (int8) weights

Which is fastest depends on the CPU (bf16 units, VNNI, AVX-512 or only AVX2), the runtimes
installed and the model, so `auto` does not guess: at load it times each candidate on a probe
batch, drops any whose output strays below a cosine of 0.999 from PyTorch fp32 on that batch, and
takes the fastest of the rest. The choice is cached per model, CPU and runtime versions (a file
lock makes worker processes share one calibration, so every worker runs the same backend), and
the start-up log and GET /v1/models say which backend runs and why.

Local mode (`embed`, `eval`, `check-compat`) always runs PyTorch fp32, so a locked text tower's
vectors stay bit-identical to the text model's own there. A server on another text runtime
answers within the cosine bound of them (measured: docs/serving.md); `--text-backend torch`
serves PyTorch's exact vectors.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from latentspace import atomic
from latentspace.process_state import kept_signal_stack

log = logging.getLogger(__name__)

Backend = Literal["torch", "openvino", "onnxruntime"]
Precision = Literal["fp32", "bf16", "int8"]
Forward = Callable[..., torch.Tensor]  # inputs (pixels; or token ids and mask) -> (N, dim) rows
# Every (backend, precision) that exists, in the order `auto` measures them.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("torch", "fp32"),
    ("torch", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
)
MIN_COSINE = 0.999
BATCH_SIZES = (4, 8, 16, 32)  # what `auto` times the chosen backend at


class BackendUnavailable(ImportError):
    """The runtime a backend needs is not installed (or cannot run this model here)."""


# -- building a forward on one runtime ------------------------------------------------------------


def _as_inputs(example) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def _dynamic_dims(x: torch.Tensor) -> int:
    """How many leading dims of an input vary between calls: the batch, and for token ids (and
    masks, 2-D integer tensors) the length too."""
    return 2 if x.dim() == 2 and not x.is_floating_point() else 1


def accelerate(module: torch.nn.Module, example, backend: str, precision: str) -> Forward:
    """A function of the same inputs as `module` (pixels; or token ids and attention mask) giving
    float32 rows, not normalised, running `module` on `backend` at `precision`. `example` is one
    batch of inputs (a tensor or a tuple); the result accepts any batch size (and, for text, any
    length). Raises BackendUnavailable when the runtime is missing, ValueError for a combination
    that does not exist."""
    if (backend, precision) not in CANDIDATES:
        raise ValueError(
            f"no {backend} backend at {precision}; choose one of " + ", ".join(f"{b}-{p}" for b, p in CANDIDATES)
        )
    module = module.eval()
    # A native runtime may swap the calling thread's alternate signal stack while it sets up
    # (OpenVINO's CPU plugin does; see process_state): whatever it does, the caller keeps its own.
    with kept_signal_stack():
        if backend == "torch":
            return module if precision == "fp32" else _torch_int8(module)
        if backend == "openvino":
            return _openvino(module, _as_inputs(example), precision)
        return _onnxruntime(module, _as_inputs(example), precision)


def _torch_int8(module: torch.nn.Module) -> Forward:
    from torch.ao.quantization import quantize_dynamic

    if not any(isinstance(m, torch.nn.Linear) for m in module.modules()):
        raise BackendUnavailable("torch int8 quantises Linear layers, and this model has none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices for the torch.ao API
        quantized = quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)

    @torch.inference_mode()
    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return quantized(*inputs).float()

    return run


@functools.cache
def _openvino_core():
    """The one OpenVINO Core of this process, kept for its life. Every Core loads its own CPU
    plugin, and each plugin swaps the thread's alternate signal stack when it starts and unmaps
    its stack when it ends; plugins ending in the order they started leave a thread pointing at
    unmapped memory (see process_state). One Core, one plugin, never destroyed: none of that."""
    import openvino as ov

    return ov.Core()


def _openvino(module: torch.nn.Module, example: tuple[torch.Tensor, ...], precision: str) -> Forward:
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable(
            "the openvino backend needs the openvino package: pip install 'latentspace[fast]'"
        ) from e
    if precision == "int8":
        raise ValueError("openvino int8 is not offered (it needs NNCF); use onnxruntime-int8 or torch-int8")
    # Through the same ONNX export as ONNX Runtime, read by OpenVINO's runtime: its model
    # converter (ov.convert_model) would also start a telemetry session (files in $TMPDIR, and a
    # try at sending usage data), which a server should not.
    core = _openvino_core()
    with tempfile.TemporaryDirectory(prefix="latentspace-onnx-") as tmp:
        graph = core.read_model(str(_export_onnx(module, example, Path(tmp) / "model.onnx")))
    graph.reshape(
        {
            port: ov.PartialShape([-1] * _dynamic_dims(x) + list(x.shape[_dynamic_dims(x) :]))
            for port, x in zip(graph.inputs, example)
        }
    )  # any batch size (and text length)
    # LATENCY: one inference uses every core, which is what one worker thread issuing whole
    # batches wants (THROUGHPUT would split the cores into streams a single request cannot fill).
    compiled = core.compile_model(
        graph,
        "CPU",
        {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()  # used only from the model's inference thread

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        output = request.infer({i: x.contiguous().numpy() for i, x in enumerate(inputs)})[0]
        return torch.from_numpy(output.copy()).float()

    return run


def _export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """`module` as an ONNX graph whose batch (and, for token ids, length) dimensions are free."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as e:
        raise BackendUnavailable("exporting to ONNX needs the onnx package: pip install 'latentspace[fast]'") from e
    names = [f"input{i}" for i in range(len(example))]
    dynamic = {
        name: {0: "batch", 1: "length"} if _dynamic_dims(x) == 2 else {0: "batch"} for name, x in zip(names, example)
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape asserts; calibration checks the outputs
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["rows"],
            dynamic_axes={**dynamic, "rows": {0: "batch"}},
        )
    return path


def _onnxruntime(module: torch.nn.Module, example: tuple[torch.Tensor, ...], precision: str) -> Forward:
    try:
        import onnxruntime as ort

        # ONNX Runtime's Linux wheels carry Microsoft's usage telemetry; a server sends none.
        ort.disable_telemetry_events()
    except ImportError as e:
        raise BackendUnavailable(
            "the onnxruntime backend needs the onnxruntime and onnx packages: pip install 'latentspace[fast]'"
        ) from e
    if precision == "bf16":
        raise ValueError("onnxruntime bf16 is not offered on CPU; use openvino-bf16")
    with tempfile.TemporaryDirectory(prefix="latentspace-onnx-") as tmp:
        path = _export_onnx(module, example, Path(tmp) / "model.onnx")
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "model.int8.onnx"
            logging.getLogger("root").setLevel(logging.ERROR)  # its advice about pre-processing
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            path = quantized
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # No busy-waiting between runs: in a server the same cores decode images and answer HTTP.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {f"input{i}": x.contiguous().numpy() for i, x in enumerate(inputs)}
        return torch.from_numpy(session.run(None, feed)[0]).float()

    return run


# -- the machine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def summary(self) -> str:
        """The features that decide between the runtimes, e.g. 'AMD EPYC (avx2, fma; no bf16)'."""
        shown = [
            f
            for f in ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma")
            if f in self.flags
        ]
        return f"{self.model} ({', '.join(shown) or 'no AVX2'}{'' if self.native_bf16 else '; no native bf16'})"


# oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA, which PyTorch's and OpenVINO's kernels
# honour) -> the prefixes of the CPU flags it rules out: a cap of AVX2 makes an AMX machine run the AVX2
# path, so `auto` must not count on bf16 there (OpenVINO's bf16 does not even compile under it).
_ISA_CAPS: dict[str, frozenset[str]] = {
    **{
        isa: frozenset({"avx512", "amx", "avx512_vnni", "avx512_bf16"})
        for isa in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")
    },
    "AVX512_CORE": frozenset({"amx", "avx512_vnni", "avx512_bf16"}),
    "AVX512_CORE_VNNI": frozenset({"amx", "avx512_bf16"}),
    **{isa: frozenset({"amx"}) for isa in ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512")},
}


def _capped(flags: frozenset[str]) -> frozenset[str]:
    """`flags` less what ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) forbids."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    dropped = _ISA_CAPS.get(cap, frozenset())
    return frozenset(f for f in flags if not any(f.startswith(prefix) for prefix in dropped))


def cpu_info() -> CpuInfo:
    """The CPU model and the feature flags the runtimes may use: /proc/cpuinfo's (on Linux), less
    what an instruction-set cap in the environment rules out."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return CpuInfo(model, _capped(flags))


def runtime_versions() -> dict[str, str | None]:
    """Installed versions of the runtimes (None: not installed); part of the calibration key."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("torch", "openvino", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


# -- the measured choice --------------------------------------------------------------------------


@dataclass
class Measurement:
    backend: str
    precision: str
    items_per_s: float | None = None
    min_cosine: float | None = None
    skipped: str | None = None  # why it was not measured or not eligible

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"


@dataclass
class Choice:
    backend: str
    precision: str
    reason: str
    measurements: list[Measurement] = field(default_factory=list)
    cached: bool = False
    batch: int | None = None  # the images per forward that serve best (None: the server's setting)

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "reason": self.reason,
            "batch": self.batch,
            "measurements": [asdict(m) for m in self.measurements],
        }

    @classmethod
    def from_json(cls, d: dict) -> Choice:
        return cls(
            d["backend"],
            d["precision"],
            d["reason"],
            [Measurement(**m) for m in d["measurements"]],
            cached=True,
            batch=d["batch"],
        )


Builder = Callable[[torch.nn.Module, object, str, str], Forward]


def _items_per_s(forward: Forward, probe: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, torch.Tensor]:
    rows = forward(*probe)  # warm-up (first calls compile / allocate)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        rows = forward(*probe)
        best = min(best, time.perf_counter() - started)
    return len(probe[0]) / best, rows


def calibrate(
    module: torch.nn.Module,
    probe,
    *,
    candidates: Sequence[tuple[str, str]] = CANDIDATES,
    min_cosine: float = MIN_COSINE,
    repeats: int = 2,
    build: Builder = accelerate,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> Choice:
    """Time every candidate on `probe` and choose the fastest whose rows keep a cosine of at least
    `min_cosine` to PyTorch fp32 on every probe image. PyTorch fp32 is always measured (it is the
    reference, and the fallback). Then time the chosen one at each of `batch_sizes` and keep the
    smallest batch within 5% of the best images/s: on a CPU a bigger batch is not always faster
    (activations outgrow the caches), and a smaller one answers sooner."""
    cpu = cpu_info()
    inputs = _as_inputs(probe)
    # A second, smaller input of another shape: a runtime whose graph kept a size of the first
    # (a traced constant) fails or strays here, and is not chosen.
    other = _other_shape(inputs)
    with torch.inference_mode():
        reference_speed, reference = _items_per_s(module.eval(), inputs, repeats)
        other_reference = module(*other).float()
    measurements = [Measurement("torch", "fp32", reference_speed, 1.0)]
    for backend, precision in candidates:
        if (backend, precision) == ("torch", "fp32"):
            continue
        m = Measurement(backend, precision)
        measurements.append(m)
        if precision == "bf16" and not cpu.native_bf16:
            m.skipped = "no native bf16 on this CPU (emulated bf16 is slower than fp32)"
            continue
        try:
            forward = build(module, probe, backend, precision)
            with torch.inference_mode():
                m.items_per_s, rows = _items_per_s(forward, inputs, repeats)
                other_rows = forward(*other).float()
        except BackendUnavailable as e:
            m.skipped = f"runtime missing: {e}"
            log.info("image backend %s skipped: %s", m.name, e)
            continue
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this model is not a choice
            m.skipped = f"failed: {type(e).__name__}: {e}"
            log.info("image backend %s skipped: %s", m.name, m.skipped)
            continue
        m.min_cosine = min(
            float(F.cosine_similarity(rows.float(), reference.float(), dim=-1).min()),
            float(F.cosine_similarity(other_rows, other_reference, dim=-1).min()),
        )
        if m.min_cosine < min_cosine:
            m.skipped = f"cosine {m.min_cosine:.5f} to PyTorch fp32 is below {min_cosine}"
    eligible = [m for m in measurements if m.skipped is None]
    best = max(eligible, key=lambda m: m.items_per_s or 0.0)
    forward = module.eval() if best.name == "torch-fp32" else build(module, probe, best.backend, best.precision)
    by_batch = _batch_speeds(forward, inputs[0], batch_sizes) if len(inputs) == 1 else {}
    batch = min(b for b, speed in by_batch.items() if speed >= 0.95 * max(by_batch.values())) if by_batch else None
    reason = (
        f"fastest of {', '.join(f'{m.name} {m.items_per_s:.1f}/s' for m in eligible)} on {cpu.summary()} "
        f"(probe batch {len(inputs[0])}, cosine >= {min_cosine} to PyTorch fp32)"
    )
    if by_batch:
        reason += "; batches of " + ", ".join(f"{b}: {v:.1f}/s" for b, v in by_batch.items()) + f" -> {batch}"
    return Choice(best.backend, best.precision, reason, measurements, batch=batch)


def _other_shape(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The probe cut to 3 items, and token ids and their mask also to 60% of the length (a
    different shape is all this input is for: the same ids go to the reference and the candidate)."""
    cut = tuple(x[:3] for x in inputs)
    if _dynamic_dims(cut[0]) == 2:
        length = max(2, int(cut[0].shape[1] * 0.6))
        cut = tuple(x[:, :length].contiguous() for x in cut)
    return cut


def _batch_speeds(forward: Forward, probe: torch.Tensor, sizes: Sequence[int]) -> dict[int, float]:
    """Images/s of `forward` at each batch size (the probe repeated to fill it), one timed run each."""
    speeds = {}
    with torch.inference_mode():
        for size in sizes:
            batch = probe.repeat((size + len(probe) - 1) // len(probe), 1, 1, 1)[:size]
            forward(batch)  # the first call at a new shape may allocate or compile
            speeds[size] = size / _timed(lambda: forward(batch))
    return speeds


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentspace" / "backends"


def calibration_key(model_fingerprint: str, probe, candidates: Sequence[tuple[str, str]]) -> str:
    """What a cached choice depends on: the model, the probe's shapes, the CPU and the runtimes."""
    cpu = cpu_info()
    shapes = [list(x.shape) for x in _as_inputs(probe)]
    blob = json.dumps(
        {
            "model": model_fingerprint,
            "probe": shapes,
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
    cache_dir: Path | None = None,
    candidates: Sequence[tuple[str, str]] = CANDIDATES,
    build: Builder = accelerate,
) -> Choice:
    """The calibrated choice for this model on this machine, from the cache when it has one.
    Concurrent callers (worker processes) wait on a file lock, so only one measures and all
    take the same choice."""
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{calibration_key(model_fingerprint, probe, candidates)}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                return Choice.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring an unreadable backend calibration cache %s", path)
        choice = calibrate(
            module,
            probe,
            candidates=candidates,
            build=build,
            batch_sizes=BATCH_SIZES if len(_as_inputs(probe)) == 1 else (),
        )
        atomic.write_text(path, json.dumps(choice.to_json(), indent=1))
        return choice


def probe_images(preprocess: Callable, n: int = 8) -> torch.Tensor:
    """A probe batch with what images have: flat colour, gradients, edges and noise, run through
    the model's own preprocessing."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = Image.new("RGB", (256, 256), tuple(int(c) for c in rng.integers(0, 256, 3)))
        elif kind == 1:
            ramp = np.linspace(0, 255, 256, dtype=np.uint8)
            img = Image.fromarray(
                np.stack(
                    [np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 128, np.uint8)], -1
                )
            )
        elif kind == 2:
            img = Image.new("RGB", (256, 192), "white")
            draw = ImageDraw.Draw(img)
            for _ in range(6):
                x, y = (int(v) for v in rng.integers(0, 160, 2))
                w, h = (int(v) for v in rng.integers(16, 96, 2))
                draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        else:
            img = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        images.append(preprocess(img))
    return torch.stack(images)


PROBE_TEXTS = [
    "a red heart",
    "search for a photo of a dog playing in the snow",
    "Grüße aus Köln",
    "the quarterly report shows revenue growth in every region except the north, where supply "
    "problems delayed the launch of two products until the following year",
    "cat",
    "how do I reset my password if I no longer have access to the email address on the account?",
    "a bowl of ramen with a soft boiled egg, spring onions and chili oil on a wooden table",
    " ".join(["a long passage about rivers, cities and the night sky"] * 12),
]


def probe_text_inputs(
    tokenize: Callable[[list[str], str], list[list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of texts from 1 to ~130 words, as (input_ids, attention_mask)."""
    from latentspace.models.text_tower import pad_ids

    return pad_ids(tokenize(PROBE_TEXTS * 2, "search_document"), pad_id)


def describe_measurements(choice: Choice) -> str:
    return "; ".join(
        f"{m.name}: "
        + (
            m.skipped
            if m.skipped and m.items_per_s is None
            else f"{m.items_per_s:.1f}/s, cosine {m.min_cosine:.5f}" + (f" ({m.skipped})" if m.skipped else "")
        )
        for m in choice.measurements
    )
