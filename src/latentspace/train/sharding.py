"""FSDP for towers too large to keep whole on every GPU (`train.parallel: fsdp`), and the
state-dict plumbing that makes a checkpoint the same whether or not a tower was sharded.

DDP keeps a full copy of every trainable parameter, gradient and AdamW moment in every process.
FSDP (PyTorch's `fully_shard`) keeps 1/world_size of each: it all-gathers one transformer block's
parameters just before the block runs and frees them after, and reduce-scatters gradients with
the same averaging as DDP's all-reduce, so `distributed.gather_with_grad`'s argument for exact
global-batch gradients holds unchanged (tests/train/test_distributed.py checks it).

Checkpoints always hold full tensors, gathered to rank 0, keyed by parameter name: a run saved
under FSDP resumes under DDP, in one process, or on another number of processes, and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard_tower(module: nn.Module, *, bf16: bool = False) -> nn.Module:
    """Shard `module` in place over the default process group: each transformer block is its own
    unit (so only one block's full parameters exist at a time), the rest (embeddings, head) the
    root unit. With bf16, parameters are gathered and run in bf16 while gradients are reduced and
    kept in fp32."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in repeated_blocks(module):
        fully_shard(block, mp_policy=policy)
    fully_shard(module, mp_policy=policy)
    return module


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The members of the outermost containers (Sequential or ModuleList) holding two or more
    trainable modules of one class: timm's `blocks`, a BERT's `encoder.layer`."""
    found: list[nn.Module] = []
    for child in module.children():
        members = list(child.children())
        if (
            isinstance(child, (nn.Sequential, nn.ModuleList))
            and len(members) > 1
            and len({type(m) for m in members}) == 1
            and any(p.requires_grad for p in child.parameters())
        ):
            found += members
        else:
            found += repeated_blocks(child)
    return found


def is_sharded(module: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s weights as whole tensors. For a sharded module this is a collective (every rank
    must call it) that leaves the tensors on rank 0, on the CPU; the other ranks get {}."""
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def whole_copy(module: nn.Module, make: Callable[[], nn.Module], is_main: bool) -> nn.Module:
    """`module` itself, or, if FSDP sharded it, a whole copy on rank 0 (`make` builds a blank one
    to load the gathered tensors into). For a sharded module this is a collective: every rank
    calls it, and the ranks other than 0 get `module` back."""
    if not is_sharded(module):
        return module
    state = full_state_dict(module)
    if not is_main:
        return module
    copy = make()
    copy.load_state_dict(state)
    return copy


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (from full_state_dict, on every rank) into a sharded or plain module."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    # a copy: torch replaces the dict's entries by this rank's shards
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True))


def optimizer_state_dict(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter names under `modules` (e.g. "vision.head.weight"),
    with whole tensors; a collective when any module is sharded (rank 0 gets the tensors)."""
    holder = nn.ModuleDict(modules)
    return get_optimizer_state_dict(holder, optimizer, options=_options(holder))


def load_optimizer_state_dict(modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, state: dict) -> None:
    holder = nn.ModuleDict(modules)
    set_optimizer_state_dict(holder, optimizer, state, options=_options(holder, loading=True))


def _options(holder: nn.Module, loading: bool = False) -> StateDictOptions:
    sharded = is_sharded(holder)
    # strict=False when loading: a parameter that has had no gradient yet (a BERT's unused pooler,
    # the text-pair temperature before the first text step) has no AdamW state to restore, as
    # torch's own Optimizer.load_state_dict allows.
    return StateDictOptions(full_state_dict=sharded, cpu_offload=sharded and not loading, strict=not loading)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_, also when some gradients are sharded DTensors and others
    plain tensors (torch's own refuses to mix them): the norm is over the whole, unsharded model.
    Returns that norm, before clipping."""
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [g for g in grads if not isinstance(g, DTensor)]
    squares = torch.nn.utils.get_total_norm(sharded).full_tensor() ** 2  # all-reduces the shards' norms
    if plain:
        squares = squares + torch.nn.utils.get_total_norm(plain).to(squares.device) ** 2
    norm = float(squares.sqrt())
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm
