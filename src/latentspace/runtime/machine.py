"""The machine a forward runs on: the CPU, the features its kernels may use, the runtimes installed.

Which runtime and precision is fastest depends on the CPU (native bf16 through AVX512-BF16 or AMX,
VNNI for int8, AVX-512 or only AVX2), so the runtime layer reads the CPU here, once, and every
choice it records names the CPU it was made on.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The CPU features that decide between kernels and runtimes, in the order they are listed.
FEATURES = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma")

# oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA, which PyTorch's and OpenVINO's kernels obey)
# -> the prefixes of the CPU flags it rules out. A cap of AVX2 makes an AMX machine run the AVX2
# path, so `auto` must not count on bf16 there (OpenVINO's bf16 does not even compile under it).
_ISA_CAPS: dict[str, tuple[str, ...]] = {
    **{isa: ("avx512", "amx") for isa in ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2")},
    "AVX512_CORE": ("amx", "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_VNNI": ("amx", "avx512_bf16"),
    **{isa: ("amx",) for isa in ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512")},
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def summary(self) -> str:
        """The features that decide between the runtimes, e.g. 'AMD EPYC (avx2, fma; no native bf16)'."""
        shown = [f for f in FEATURES if f in self.flags]
        return f"{self.model} ({', '.join(shown) or 'no AVX2'}{'' if self.native_bf16 else '; no native bf16'})"


def isa_capped(flags: frozenset[str]) -> frozenset[str]:
    """`flags` less what ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) rules out."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    dropped = _ISA_CAPS.get(cap, ())
    return frozenset(f for f in flags if not f.startswith(dropped)) if dropped else flags


@functools.cache
def _proc_cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_info() -> CpuInfo:
    """The CPU model and the feature flags the runtimes may use: /proc/cpuinfo's (on Linux), less
    what an instruction-set cap in the environment rules out."""
    model, flags = _proc_cpuinfo()
    return CpuInfo(model, isa_capped(flags))


def runtime_versions() -> dict[str, str | None]:
    """Installed versions of the runtimes (None: not installed); part of every calibration's key."""
    out: dict[str, str | None] = {}
    for package in ("torch", "openvino", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
