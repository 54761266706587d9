"""placeholder"""
from __future__ import annotations

import platform
import time

import torch


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine_lines() -> list[str]:
    return [f"CPU: {cpu_model()}", f"torch threads: {torch.get_num_threads()}",
            f"fp32 matmul 2048x2048: {matmul_gflops():.1f} GFLOP/s (best of 5)"]
