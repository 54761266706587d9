"""What machine a benchmark ran on, for the header every benchmark prints: machines of the same
kind differ 1.5-3x in speed, so an absolute time means little without the fp32 matmul rate."""

from __future__ import annotations

import platform
import time

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul speed now, best of `repeats` (after one warm-up product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


# The CPU features that decide which kernels and runtimes are fast here.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")


def cpu_flags() -> list[str]:
    """Which of FLAGS this CPU reports (from /proc/cpuinfo; empty where that is not readable)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in FLAGS if f in present]
    except OSError:
        pass
    return []


def bf16_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """bf16 matmul speed now (meaningful only where the CPU has native bf16: AVX512-BF16 or AMX)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def describe() -> str:
    """Three lines for a log: the CPU, its features, and its measured matmul rates."""
    flags = cpu_flags()
    rates = f"fp32 matmul {matmul_gflops():.0f} GFLOP/s"
    if {"avx512_bf16", "amx_bf16"} & set(flags):
        rates += f", bf16 matmul {bf16_matmul_gflops():.0f} GFLOP/s"
    return "\n".join(
        [
            f"CPU: {cpu_model()} ({platform.machine()}), {torch.get_num_threads()} torch threads",
            f"features: {', '.join(flags) or 'none of ' + ', '.join(FLAGS)}",
            f"measured: {rates} (2048x2048, best of 5)",
        ]
    )


if __name__ == "__main__":
    print(describe())
