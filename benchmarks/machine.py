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
