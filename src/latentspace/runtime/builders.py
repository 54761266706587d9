"""A forward on one runtime at one precision: a function of the module's inputs (pixels; or token
ids and their attention mask) giving float32 rows, not normalised.

    torch        fp32   the module itself: the reference every other one is checked against
    torch        int8   dynamic int8 quantisation of the Linear layers (weights int8, activations
                        quantised per batch); helps transformers, not ConvNets
    openvino     fp32   OpenVINO's compiled graph (LATENCY hint: one inference uses every core)
    openvino     bf16   the same in bfloat16: fast where the CPU has native bf16 (AVX512-BF16, AMX)
    onnxruntime  fp32   ONNX Runtime on the exported graph
    onnxruntime  int8   ONNX Runtime with dynamically quantised (int8) weights

OpenVINO and ONNX Runtime read one ONNX export of the module, whose batch (and, for token ids,
length) dimensions are free, so every forward takes any batch size.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from latentspace.process_state import kept_signal_stack

Forward = Callable[..., torch.Tensor]  # inputs (pixels; or token ids and mask) -> (N, dim) rows

# Every (runtime, precision) that exists, in the order `auto` measures them.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("torch", "fp32"),
    ("torch", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
)


class RuntimeUnavailable(ImportError):
    """The package a runtime needs is not installed, or the runtime cannot run this module."""


def as_inputs(example) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def dynamic_dims(x: torch.Tensor) -> int:
    """How many leading dims of an input vary between calls: the batch, and for token ids (and
    masks, 2-D integer tensors) the length too."""
    return 2 if x.dim() == 2 and not x.is_floating_point() else 1


def build_forward(module: torch.nn.Module, example, runtime: str, precision: str) -> Forward:
    """`module` (in eval mode) as a forward on `runtime` at `precision`. `example` is one batch of
    inputs (a tensor or a tuple). Raises RuntimeUnavailable when the runtime is missing, ValueError
    for a combination that does not exist."""
    if (runtime, precision) not in CANDIDATES:
        raise ValueError(
            f"no {runtime} runtime at {precision}; choose one of " + ", ".join(f"{r}-{p}" for r, p in CANDIDATES)
        )
    module = module.eval()
    # A native runtime may swap the calling thread's alternate signal stack while it sets up
    # (OpenVINO's CPU plugin does; see process_state): whatever it does, the caller keeps its own.
    with kept_signal_stack():
        if runtime == "torch":
            return _torch(module) if precision == "fp32" else _torch_int8(module)
        if runtime == "openvino":
            return _openvino(module, as_inputs(example), precision)
        return _onnxruntime(module, as_inputs(example), precision)


def _torch(module: torch.nn.Module) -> Forward:
    @torch.inference_mode()
    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return module(*inputs).float()

    return run


def _torch_int8(module: torch.nn.Module) -> Forward:
    from torch.ao.quantization import quantize_dynamic

    if not any(isinstance(m, torch.nn.Linear) for m in module.modules()):
        raise RuntimeUnavailable("torch int8 quantises Linear layers, and this model has none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices for the torch.ao API
        quantized = quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)
    return _torch(quantized)


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
        raise RuntimeUnavailable(
            "the openvino runtime needs the openvino package: pip install 'latentspace[fast]'"
        ) from e
    if precision == "int8":
        raise ValueError("openvino int8 is not offered (it needs NNCF); use onnxruntime-int8 or torch-int8")
    # Through the same ONNX export as ONNX Runtime, read by OpenVINO's runtime: its model
    # converter (ov.convert_model) would also start a telemetry session (files in $TMPDIR, and a
    # try at sending usage data), which a library should not.
    core = _openvino_core()
    with tempfile.TemporaryDirectory(prefix="latentspace-onnx-") as tmp:
        graph = core.read_model(str(export_onnx(module, example, Path(tmp) / "model.onnx")))
    graph.reshape(
        {
            port: ov.PartialShape([-1] * dynamic_dims(x) + list(x.shape[dynamic_dims(x) :]))
            for port, x in zip(graph.inputs, example)
        }
    )  # any batch size (and text length)
    # LATENCY: one inference uses every core, which is what a caller issuing whole batches wants
    # (THROUGHPUT would split the cores into streams a single batch cannot fill).
    compiled = core.compile_model(
        graph,
        "CPU",
        {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "PERFORMANCE_HINT": "LATENCY"},
    )
    # An infer request serves one thread at a time: each calling thread gets its own.
    local = threading.local()

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        output = request.infer({i: x.contiguous().numpy() for i, x in enumerate(inputs)})[0]
        return torch.from_numpy(output.copy()).float()

    return run


def export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    """`module` as an ONNX graph whose batch (and, for token ids, length) dimensions are free."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as e:
        raise RuntimeUnavailable("exporting to ONNX needs the onnx package: pip install 'latentspace[fast]'") from e
    names = [f"input{i}" for i in range(len(example))]
    dynamic = {
        name: {0: "batch", 1: "length"} if dynamic_dims(x) == 2 else {0: "batch"} for name, x in zip(names, example)
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape asserts; calibration checks the outputs
        torch.onnx.export(
            module,
            tuple(x.contiguous() for x in example),
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

        # ONNX Runtime's Linux wheels carry Microsoft's usage telemetry; a library sends none.
        ort.disable_telemetry_events()
    except ImportError as e:
        raise RuntimeUnavailable(
            "the onnxruntime runtime needs the onnxruntime and onnx packages: pip install 'latentspace[fast]'"
        ) from e
    if precision == "bf16":
        raise ValueError("onnxruntime bf16 is not offered on CPU; use openvino-bf16")
    with tempfile.TemporaryDirectory(prefix="latentspace-onnx-") as tmp:
        path = export_onnx(module, example, Path(tmp) / "model.onnx")
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "model.int8.onnx"
            logging.getLogger("root").setLevel(logging.ERROR)  # its advice about pre-processing
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            path = quantized
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # No busy-waiting between runs: the same cores decode images and answer requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feed = {f"input{i}": x.contiguous().numpy() for i, x in enumerate(inputs)}
        return torch.from_numpy(session.run(None, feed)[0]).float()

    return run
