"""The runtime layer: which library and precision runs each forward, for every entry point.

Local `embed`, `eval`, `eval-text`, `check-compat`, `collection build` (local and Ray), `serve`
and training's frozen-feature cache all run their forwards through here:

    from latentspace.runtime import RuntimeSettings, on_runtimes
    model = on_runtimes(load(spec), image=RuntimeSettings(), text=RuntimeSettings(runtime="torch", precision="fp32"))

- `machine`: the CPU and the features its kernels may use (an instruction-set cap honoured).
- `builders`: one forward on one runtime (PyTorch, OpenVINO, ONNX Runtime; fp32, bf16, int8).
- `choice`: `RuntimeSettings` (what is asked: a runtime and a precision, either may be `auto`),
  the measured choice within cosine 0.999 of PyTorch fp32, and its cache.
- `forwards`: a model with its forwards on the chosen runtimes, falling back to PyTorch when a
  runtime fails.

PyTorch fp32 (`torch`/`fp32`) is the model as trained: pin it for vectors that are bit for bit
the reference. Every other runtime answers within the cosine bound of it.
"""

from latentspace.runtime.builders import CANDIDATES, RuntimeUnavailable, build_forward
from latentspace.runtime.choice import (
    AUTO,
    EXACT,
    MIN_COSINE,
    PRECISION_NAMES,
    RUNTIME_NAMES,
    Choice,
    ForwardRuntimes,
    Measurement,
    PrecisionName,
    RuntimeName,
    RuntimeSettings,
    calibrate,
    choose,
    forward_settings,
    precision_field,
    runtime_field,
)
from latentspace.runtime.forwards import ModelOnRuntimes, on_runtimes, probe_images, probe_text_inputs
from latentspace.runtime.machine import CpuInfo, cpu_info

__all__ = [
    "AUTO",
    "CANDIDATES",
    "EXACT",
    "ForwardRuntimes",
    "MIN_COSINE",
    "PRECISION_NAMES",
    "RUNTIME_NAMES",
    "Choice",
    "CpuInfo",
    "Measurement",
    "ModelOnRuntimes",
    "PrecisionName",
    "RuntimeName",
    "RuntimeSettings",
    "RuntimeUnavailable",
    "build_forward",
    "calibrate",
    "forward_settings",
    "precision_field",
    "runtime_field",
    "choose",
    "cpu_info",
    "on_runtimes",
    "probe_images",
    "probe_text_inputs",
]
