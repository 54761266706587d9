"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the contrastive batch size no longer depends on activation memory.

A contrastive loss couples every sample with every other, so the batch cannot simply be split
into accumulation steps. But the loss only touches the encoders through the embeddings, and the
embeddings are small. So:

  (a) encode the batch chunk by chunk under no_grad and keep only the embeddings;
  (b) compute the full-batch loss on those embeddings as leaf tensors and back-propagate it to get
      dL/d(embedding) for every sample (and the gradients of parameters the loss itself uses,
      such as the logit scale);
  (c) encode each chunk again, with grad, and back-propagate the cached dL/d(embedding) slice
      through it; parameter gradients accumulate over chunks into exactly dL/dtheta.

Peak activation memory is that of one chunk; the price is a second forward pass.

Step (c) must recompute the *same* embeddings as step (a), so each chunk's RNG state (dropout,
stochastic depth) is captured before (a) and restored for (c). Afterwards the global RNG is left
where (a) and (b) left it, as if each chunk had been encoded once.

The optimizer step, zeroing gradients and gradient clipping stay with the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# What a trainable encoder eats: a tensor (images, token ids), a list (captions) or a mapping of
# tensors (a tokenizer's output). Anything sliceable along its first dimension works.
Batch = Tensor | Sequence[Any] | Mapping[str, Tensor]
Encoder = Callable[[Any], Tensor]


def identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Trainable:
    """A loss input produced by an encoder with trainable parameters, from these inputs.

    `synced`: the DDP or FSDP module whose gradient synchronisation GradCache defers to the last
    chunk, when `encoder` is a function that calls it (under autocast, say) rather than the
    module itself; None means the encoder itself."""

    encoder: Encoder
    inputs: Batch
    synced: Any = None

    @property
    def module(self) -> Any:
        return self.synced if self.synced is not None else self.encoder


# A loss input: a Trainable tower, or fixed embeddings (a frozen tower's, precomputed) as a tensor.
Tower = Trainable | Tensor


def cached_backward(
    towers: Sequence[Tower], loss_fn: Callable[..., Tensor], chunk: int, gather: Callable[[Tensor], Tensor] = identity
) -> Tensor:
    """Back-propagate loss_fn(*gathered embeddings of towers) in chunks; return the detached loss.

    Any number of towers: an image-text loss is a Trainable image tower and a text tower (Trainable,
    or a Tensor of a frozen tower's embeddings); Three Towers' frozen third tower is a Tensor
    entry; a text-text loss is two Trainable entries that share an encoder. Every tower's per-rank
    embeddings go through `gather` (e.g. functools.partial(gather_with_grad, env=env)) before the
    loss, fixed ones included, so every rank sees the whole global batch. Gradients accumulate
    into .grad (zero them before).

    DDP: each encoder is called directly, so an encoder that is a DistributedDataParallel module
    (or an FSDP one, or a function calling one of those, named by Trainable.synced) runs its
    forward/backward through
    DDP's hooks. DDP all-reduces gradients in backward hooks, once per backward call; with k chunks
    that would be k all-reduces of every gradient (still the right result, since each averages what
    has accumulated so far and averaging is linear, but k times the communication). Running all but
    the encoder's last chunk inside `no_sync()` lets the gradients accumulate locally and be
    all-reduced (averaged) once, on the last backward: DDP's own gradient-accumulation pattern.
    Each with-grad forward is followed by its backward before the next forward, as DDP requires;
    the no_grad forwards of step (a) do not engage DDP's reducer. Pass the DDP module itself, not a
    method of its `.module`, or DDP never sees the forward and its gradients are never averaged.
    """
    if chunk < 1:
        raise ValueError(f"the gradient-cache chunk must be at least 1, got {chunk}")
    n = _batch_len(towers)
    spans = [(start, min(start + chunk, n)) for start in range(0, n, chunk)]

    # (a) embeddings without activations, remembering the RNG state each chunk started from.
    embeddings: list[Tensor] = []
    rng: dict[int, list[_RngState]] = {}
    for i, tower in enumerate(towers):
        if isinstance(tower, Tensor):
            embeddings.append(tower.detach())
            continue
        rng[i], parts = [], []
        with torch.no_grad():
            for start, stop in spans:
                rng[i].append(_RngState.capture())
                parts.append(_encode(tower, start, stop))
        embeddings.append(torch.cat(parts))

    # (b) the full-batch loss on leaf copies of the embeddings gives dL/d(embedding). Through
    # gather's backward each rank receives the sum over ranks' identical losses (see
    # distributed.gather_with_grad for why that is what DDP's averaging needs).
    leaves = [e.requires_grad_() if i in rng else e for i, e in enumerate(embeddings)]
    loss = loss_fn(*(gather(leaf) for leaf in leaves))
    loss.backward()
    cached = {i: _grad_or_zeros(leaves[i]) for i in rng}
    after_loss = _RngState.capture()

    # (c) re-encode each chunk with grad under its recorded RNG state and push the cached slice in.
    jobs = [(i, j) for i in rng for j in range(len(spans))]
    # Towers that share a module (a text-text loss's two sides) synchronise once, after both.
    last_job_of = {id(towers[i].module): (i, j) for i, j in jobs}  # type: ignore[union-attr]
    try:
        for i, j in jobs:
            tower: Trainable = towers[i]  # type: ignore[assignment]
            start, stop = spans[j]
            is_last = last_job_of[id(tower.module)] == (i, j)
            rng[i][j].restore()
            with contextlib.nullcontext() if is_last else _deferred_sync(tower.module):
                _encode(tower, start, stop).backward(cached[i][start:stop])
    finally:
        after_loss.restore()
    return loss.detach()


def _batch_len(towers: Sequence[Tower]) -> int:
    if not towers:
        raise ValueError("cached_backward needs at least one tower")
    if not any(isinstance(t, Trainable) for t in towers):
        raise ValueError("no tower is trainable: there is nothing to back-propagate into")
    lengths = [len(t) if isinstance(t, Tensor) else _inputs_len(t.inputs) for t in towers]
    if len(set(lengths)) != 1:
        raise ValueError(f"every tower must see the same number of samples, got {lengths}")
    if lengths[0] == 0:
        raise ValueError("the batch is empty")
    return lengths[0]


def _inputs_len(inputs: Batch) -> int:
    if isinstance(inputs, Mapping):
        lengths = {len(v) for v in inputs.values()}
        if len(lengths) != 1:
            raise ValueError(f"the inputs' fields have different lengths: {sorted(lengths)}")
        return lengths.pop()
    return len(inputs)


def _slice(inputs: Batch, start: int, stop: int) -> Batch:
    if isinstance(inputs, Mapping):
        return {key: value[start:stop] for key, value in inputs.items()}
    return inputs[start:stop]


def _encode(tower: Trainable, start: int, stop: int) -> Tensor:
    emb = tower.encoder(_slice(tower.inputs, start, stop))
    if emb.shape[0] != stop - start:
        raise ValueError(f"the encoder returned {emb.shape[0]} embeddings for {stop - start} inputs")
    return emb


def _grad_or_zeros(leaf: Tensor) -> Tensor:
    # A tower the loss ignores gets no gradient; treat it as zero rather than failing in (c).
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


@contextlib.contextmanager
def _deferred_sync(module: Any) -> Iterator[None]:
    """Gradients accumulate locally inside the block: DDP's `no_sync()`, FSDP's
    `set_requires_gradient_sync(False)`; nothing for a module that synchronises nothing."""
    if callable(getattr(module, "no_sync", None)):
        with module.no_sync():
            yield
    elif callable(getattr(module, "set_requires_gradient_sync", None)):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


@dataclass(frozen=True)
class _RngState:
    """The global RNG state an encoder's random ops draw from: CPU, and the current CUDA device.

    Only the current CUDA device is saved (init_distributed makes it the process's own GPU); an
    encoder spread over several GPUs, or random ops on other device types, would not be replayed.
    """

    cpu: Tensor
    cuda: Tensor | None = None
    cuda_device: int | None = None

    @staticmethod
    def capture() -> _RngState:
        cpu = torch.get_rng_state()
        # is_initialized: a CPU-only run must not create a CUDA context just to read its RNG.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.cuda.current_device()
            return _RngState(cpu, torch.cuda.get_rng_state(device), device)
        return _RngState(cpu)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.cuda_device)
