"""Faster image forwards for serving, chosen by measurement (see benchmarks/serve.py).

On the CPUs this project runs on, the vision forward is the whole cost of an image request, so
HTTP overhead cannot be the lever: a faster forward is. `torch` runs the model as trained
(fp32). `openvino` compiles the same vision module with OpenVINO; at `fp32` it matches PyTorch
to float tolerance, at `bf16` it uses the CPU's bfloat16 instructions where they exist (a cosine
to fp32 of ~0.9999 on a ViT-B/16; the benchmark reports the exact figure for your model).

Only the image tower is compiled; text keeps running in PyTorch, so text vectors stay
bit-identical to the text model's own.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Literal

import torch

log = logging.getLogger(__name__)

Backend = Literal["torch", "openvino"]
Precision = Literal["fp32", "bf16"]
PixelForward = Callable[[torch.Tensor], torch.Tensor]


def accelerate(module: torch.nn.Module, example: torch.Tensor, backend: Backend,
               precision: Precision) -> PixelForward:
    """Return a pixels -> rows function (float32, not normalised) running `module` on `backend`.

    `module` is the model's image forward (`Embedder.image_module`); `example` a preprocessed
    batch of the right shape (any batch size: the compiled model accepts every batch size)."""
    if backend == "torch":
        if precision != "fp32":
            raise ValueError("the torch backend serves fp32 only (this CPU has no fast bf16 path in PyTorch); "
                             "use --image-backend openvino for bf16")
        return module
    if backend == "openvino":
        return _openvino(module, example, precision)
    raise ValueError(f"unknown image backend {backend!r}; choose torch or openvino")


def _openvino(module: torch.nn.Module, example: torch.Tensor, precision: Precision) -> PixelForward:
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("the openvino image backend needs the openvino package: "
                          "pip install 'latentspace[fast]' (or pip install openvino)") from e
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about shape asserts; the test checks the outputs
        graph = ov.convert_model(module, example_input=example)
    batch_free = ov.PartialShape([-1, *example.shape[1:]])  # any batch size, fixed image size
    graph.reshape({graph.inputs[0]: batch_free})
    core = ov.Core()
    precisions = {"fp32": "f32", "bf16": "bf16"}
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        log.warning("this CPU has no bf16 instructions; OpenVINO will emulate bf16 (slow) - prefer fp32 here")
    # LATENCY: one inference uses every core, which is what one worker thread issuing whole
    # batches wants (THROUGHPUT would split cores into streams that a single request cannot fill).
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precisions[precision],
                                                  "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()  # used only from the model's inference thread

    def run(pixels: torch.Tensor) -> torch.Tensor:
        output = request.infer({0: pixels.contiguous().numpy()})[0]
        return torch.from_numpy(output.copy()).float()

    return run
