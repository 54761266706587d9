"""Multi-process training on PyTorch's own distributed stack (torchrun + DDP), and the few helpers
the contrastive loss needs on top of it.

Launch with `torchrun --nproc_per_node N [--nnodes M ...] -m latentspace.train CONFIG`. torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process;
`init_distributed` reads them and joins the process group. A plain `python -m latentspace.train`
(no WORLD_SIZE, or WORLD_SIZE=1) runs as a single process and never touches torch.distributed, so
every helper here is a no-op there.

The contrastive loss wants negatives from the *global* batch: every rank gathers all ranks'
embeddings with `gather_with_grad` and computes the same global loss. Why that gives exactly the
single-process gradient under DDP is explained at `gather_with_grad`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from latentspace.train.sharding import shard_tower

T = TypeVar("T")

# The variables torchrun exports; anything else (SLURM, MPI) must be mapped onto these first.
_REQUIRED_WHEN_DISTRIBUTED = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. The default is the single-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The one process that writes checkpoints, logs and model directories."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(
    backend: str | None = None, *, device: str | None = None, timeout: timedelta | None = None
) -> DistEnv:
    """Join the torchrun job described by the environment, or return the single-process env.

    backend: None picks nccl when the processes use CUDA devices, gloo otherwise.
    device: "cuda" or "cpu"; None picks CUDA when available. With CUDA each process takes the
        device numbered by its LOCAL_RANK and makes it the current device.
    timeout: how long a collective may wait for the other ranks before failing (torch's default
        when None), so a dead worker stops the job instead of hanging it.

    Safe to call twice: a process group that already exists is reused.
    """
    rank, world_size, local_rank = _read_launch_env()
    dev = _pick_device(device, local_rank)
    if world_size == 1:
        return DistEnv(0, 1, local_rank, dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the nccl backend needs CUDA devices; use backend='gloo' to train on CPUs")
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(
                f"a process group already exists as rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the environment says rank {rank} of {world_size}"
            )
    else:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistEnv(rank, world_size, local_rank, dev)


def _read_launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables, with errors that name the fix."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        if "RANK" in env:
            raise ValueError(
                f"RANK is set ({env['RANK']}) but WORLD_SIZE is not: launch with torchrun, which sets "
                "both, or unset RANK to train in a single process"
            )
        return 0, 1, _int_var("LOCAL_RANK", default=0)
    world_size = _int_var("WORLD_SIZE")
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, got {world_size}")
    if world_size == 1:
        rank = _int_var("RANK", default=0)
        if rank != 0:
            raise ValueError(f"RANK is {rank} but WORLD_SIZE is 1: the only rank is 0")
        return 0, 1, _int_var("LOCAL_RANK", default=0)
    missing = [name for name in _REQUIRED_WHEN_DISTRIBUTED if name not in env]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not set: launch with torchrun, which sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
        )
    rank, local_rank = _int_var("RANK"), _int_var("LOCAL_RANK")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, {world_size}) for WORLD_SIZE {world_size}, got {rank}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    return rank, world_size, local_rank


def _int_var(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _pick_device(device: str | None, local_rank: int) -> torch.device:
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; start at most "
            "that many processes per node (torchrun --nproc_per_node)"
        )
    # Every later CUDA call (NCCL's communicator included) goes to this process's own GPU.
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def shutdown() -> None:
    """Leave the process group (a no-op in a single-process run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here (e.g. rank 0 finished writing a file the others read)."""
    if not env.is_distributed:
        return
    if dist.get_backend() == "nccl":
        # Names the device so NCCL need not guess which GPU this rank uses.
        dist.barrier(device_ids=[env.local_rank])
    else:
        dist.barrier()


def main_first(env: DistEnv, make: Callable[[], T]) -> T:
    """Rank 0 runs `make` (filling a shared on-disk cache, say) before the others do, so only one
    process ever writes; the others then find everything in place."""
    if not env.is_main:
        barrier(env)
    result = make()
    if env.is_main:
        barrier(env)
    return result


def distribute(module: nn.Module, env: DistEnv, parallel: str, *, bf16: bool, find_unused: bool = False) -> nn.Module:
    """`module` as the job trains it: in a single process, itself; under torchrun, inside DDP (a
    full copy per process, gradients averaged over processes) or sharded in place by FSDP
    (`parallel` "fsdp"; with `bf16`, run in bf16 with fp32 gradients). `find_unused`: DDP then
    allows parameters that take no part in the forward (a transformer's pooler)."""
    if not env.is_distributed:
        return module
    if parallel == "fsdp":
        return shard_tower(module, bf16=bf16)
    device_ids = [env.local_rank] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused)


def gather_with_grad(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0 (rank order), keeping the autograd graph.

    Every rank must pass the same shape (check_global_batch makes per-rank batches equal).

    Why not `torch.distributed.all_gather`: it writes into preallocated tensors outside autograd,
    so the gathered copy of this rank's own embeddings has no grad_fn and the loss sends no
    gradient back to the encoder at all. (open_clip patches that by putting its local, grad-tracking
    tensor back into its own slot; that tracks only this rank's copy and so gives 1/world_size of
    the true gradient, which Adam's scale invariance mostly hides.)

    Why the gradient of this one is exactly right under DDP. Let L be the loss of the global batch
    and g_k = dL/d(e_k) the gradient for rank k's slice of embeddings e_k. Every rank computes the
    same L on the same gathered tensor, so rank r's copy of the loss also sends g_k to slot k. The
    backward of `torch.distributed.nn.functional.all_gather` is a reduce-scatter with SUM: rank k
    receives the sum of what all world_size copies of the loss sent to its slot, i.e.
    world_size * g_k. Back-propagated through rank k's encoder, that gives parameter gradient
    world_size * J_k^T g_k on rank k. DDP then *averages* parameter gradients over ranks:
        (1 / world_size) * sum_k world_size * J_k^T g_k = sum_k J_k^T g_k = dL/dtheta,
    the gradient of one process running the whole global batch. Parameters that L uses directly
    (the logit scale) get dL/ds on every rank, and averaging identical values keeps them.
    tests/train/test_distributed.py checks the gradients themselves, not only the weights after an
    Adam step (Adam would hide a constant factor).
    """
    if not env.is_distributed:
        return x
    with warnings.catch_warnings():
        # torch 2.14 marks this public, differentiable all_gather deprecated in favour of a private
        # module (torch.distributed._functional_collectives); we stay on the public API.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(x), dim=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter], env: DistEnv) -> None:
    """Average .grad over ranks, for parameters that live outside a DDP module (the logit scale).

    Their gradient comes from the global loss that every rank computes identically, so averaging
    changes nothing in exact arithmetic; it guards against ranks drifting apart through
    floating-point differences (different kernels, non-deterministic reductions) over many steps.
    """
    if not env.is_distributed:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(env.world_size)


def check_global_batch(global_batch: int, world_size: int, grad_cache_chunk: int | None = None) -> int:
    """Validate the batch layout before any step runs; return the per-rank batch.

    The global batch (the number of in-batch negatives + 1) is what the config promises; each rank
    holds global_batch / world_size samples and, with gradient caching, encodes them in chunks of
    grad_cache_chunk. A chunk that does not divide the per-rank batch would work numerically
    (cached_backward handles a short last chunk) but gives every step a second input shape, which
    costs a recompile under torch.compile and a second autotuning pass in cuDNN, so it is refused
    here as a configuration error.
    """
    if global_batch < 1:
        raise ValueError(f"the global batch must be at least 1, got {global_batch}")
    if world_size < 1:
        raise ValueError(f"the world size must be at least 1, got {world_size}")
    if global_batch % world_size:
        lower = global_batch // world_size * world_size
        options = " or ".join(str(n) for n in (lower, lower + world_size) if n > 0)
        raise ValueError(
            f"the global batch {global_batch} does not split evenly over {world_size} processes: "
            f"choose a multiple of {world_size} (e.g. {options}) or change the number of processes"
        )
    per_rank = global_batch // world_size
    if grad_cache_chunk is not None:
        if grad_cache_chunk < 1:
            raise ValueError(f"the gradient-cache chunk must be at least 1, got {grad_cache_chunk}")
        if per_rank % grad_cache_chunk:
            where = f" ({global_batch} / {world_size} processes)" if world_size > 1 else ""
            raise ValueError(
                f"the gradient-cache chunk {grad_cache_chunk} does not divide the per-process batch "
                f"{per_rank}{where}: choose a divisor of {per_rank}"
            )
    return per_rank
