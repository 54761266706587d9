"""Model FLOPs of a training step, accelerator peaks and model FLOPs utilisation (MFU).

MFU = (model FLOPs of one step / seconds per step) / the device's peak FLOPs per second. "Model
FLOPs" are the matrix multiplications, convolutions and attention a step runs, as PyTorch's
`FlopCounterMode` counts them (forward and backward); elementwise work, optimizer updates and
recomputation are not counted, which is the usual convention for MFU.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode

# Dense (no structured sparsity) tensor-core peaks in TFLOP/s, from NVIDIA's data sheets. Matched
# against `torch.cuda.get_device_name()` in order, so the more specific names come first. "tf32"
# is what fp32 matmuls run at once TF32 is allowed (torch.backends.cuda.matmul.allow_tf32).
_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIE", {"bf16": 756.0, "tf32": 378.0}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.5}),  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    ("H200", {"bf16": 989.0, "tf32": 494.5}),  # "NVIDIA H200", "NVIDIA GH200 ..." (same compute as H100 SXM)
    ("A100", {"bf16": 312.0, "tf32": 156.0}),
)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak of a known accelerator for `precision` ("bf16", or "fp32" run as TF32);
    None for CPUs and unknown devices, where the caller must supply the figure."""
    key = "bf16" if precision == "bf16" else "tf32"
    name = device_name.upper()
    for pattern, peaks in _PEAK_TFLOPS:
        if pattern in name:
            return peaks[key]
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """Model FLOPs of everything `fn` runs (call it with the forward and `.backward()` inside to
    count a training step's forward + backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops_per_step: int, seconds_per_step: float, peak: float | None) -> float | None:
    """Fraction of `peak` (TFLOP/s) achieved; None when the peak is unknown."""
    if peak is None or peak <= 0 or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / (peak * 1e12)
