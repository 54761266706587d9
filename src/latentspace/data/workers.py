"""How many DataLoader worker processes to start, from the CPUs this process may use."""

from __future__ import annotations

import os

# Beyond this many decoding workers per process, a training step waits on the GPU, not on data
# (and each worker holds its own shuffle buffer in memory).
MAX_TRAIN_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a container or `taskset` allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_train_workers(processes_on_node: int | None = None) -> int:
    """`data.workers: auto`: this process's share of the node's CPUs, less one for the process
    itself (it runs the step and collates), at most MAX_TRAIN_WORKERS; 0 when there is no CPU to
    spare. `processes_on_node` defaults to torchrun's LOCAL_WORLD_SIZE (1 without torchrun)."""
    if processes_on_node is None:
        processes_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = available_cpus() // max(1, processes_on_node)
    return max(0, min(MAX_TRAIN_WORKERS, share - 1))
