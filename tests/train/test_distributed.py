"""Two gloo processes under DDP or FSDP train exactly like one process on the whole global batch.

One spawn (2 processes, each holding half of a global batch of 8) runs eight scenarios: DDP or
FSDP, plain or gradient-cached backward, with a frozen text tower (precomputed embeddings) or a
trainable one. FSDP scenarios also clip the gradient norm (sharded and plain gradients together).
Each rank saves its loss, gradients and weights after one AdamW step; the parent recomputes the
same step in a single process and compares. Everything is float64, so the gradients must match to
~1e-12: a gradient off by the world size (the classic all_gather mistake) cannot hide behind
Adam's scale invariance, because the gradients are compared before the step.

Dropout is on. Each rank draws from seed SEED + rank; the single-process reference reproduces
that by encoding rank r's half (in the same chunks) right after seeding SEED + r.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from latentspace.train.distributed import (
    DistEnv,
    average_gradients,
    barrier,
    check_global_batch,
    gather_with_grad,
    init_distributed,
    shutdown,
)
from latentspace.train.gradcache import Trainable, cached_backward
from latentspace.train.loss import LogitScale, contrastive_loss
from latentspace.train.sharding import (
    clip_grad_norm,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state_dict,
    optimizer_state_dict,
    shard_tower,
)

WORLD, GLOBAL_BATCH, CHUNK, DIM, SEED = 2, 8, 2, 16, 100
CLIP = 0.05  # small enough that clipping bites
# name -> (gradient-cache chunk or None, trainable text tower?, "ddp" or "fsdp")
SCENARIOS = {
    f"{parallel}-{'plain' if chunk is None else 'gradcache'}-{'trainable' if text else 'frozen'}-text": (
        chunk,
        text,
        parallel,
    )
    for parallel in ("ddp", "fsdp")
    for text in (False, True)
    for chunk in (None, CHUNK)
}
TIGHT = {"rtol": 1e-9, "atol": 1e-12}


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.nn.functional.gelu(self.fc(x))


class ImageEncoder(nn.Module):
    """A stem, repeated blocks (FSDP shards each on its own) and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.Dropout(0.2), nn.Flatten())
        self.blocks = nn.Sequential(Block(8 * 4 * 4), Block(8 * 4 * 4))
        self.head = nn.Linear(8 * 4 * 4, DIM)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(images)))


class TokenEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 12)
        self.mlp = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Dropout(0.2), nn.Linear(24, DIM))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(tokens).mean(1))


def _models() -> tuple[ImageEncoder, TokenEncoder, LogitScale]:
    torch.manual_seed(0)
    return ImageEncoder().double(), TokenEncoder().double(), LogitScale(0.07).double()


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen, dtype=torch.float64)
    text_emb = torch.randn(GLOBAL_BATCH, DIM, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 30, (GLOBAL_BATCH, 5), generator=gen)
    return images, text_emb, tokens


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _adamw(modules: tuple[nn.Module, ...]) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)


def _adamw_step(*modules: nn.Module, clip: float | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(Clipping, then) gradients, then one AdamW step. Returns the gradients, weights and AdamW
    moments as name -> whole tensor (the moments as the checkpoint saves them: under FSDP only
    rank 0 gets them), and the checkpoint's optimizer state."""
    params = [p for m in modules for p in m.parameters()]
    out = {}
    if clip is not None:
        out["norm"] = torch.tensor(clip_grad_norm(params, clip))
        assert out["norm"] > 2 * clip  # the clipping changes the gradients
    for i, m in enumerate(modules):
        out |= {f"grad/{i}.{n}": _whole(p.grad) for n, p in m.named_parameters() if p.grad is not None}
    optimizer = _adamw(modules)
    optimizer.step()
    for i, m in enumerate(modules):
        out |= {f"weight/{i}.{n}": _whole(p) for n, p in m.named_parameters()}
    saved = optimizer_state_dict({str(i): m for i, m in enumerate(modules)}, optimizer)
    out |= {
        f"adam/{name}.{key}": v
        for name, moments in saved.get("state", {}).items()
        for key, v in moments.items()
        if key != "step"
    }
    return out, saved


# ---------------------------------------------------------------- the worker (one per rank)


def _counting_allreduce(calls: list, bucket):
    """DDP's default averaging all-reduce (over the default group), counted."""
    calls.append(1)
    return default_hooks.allreduce_hook(None, bucket)


def _ddp(module: nn.Module, calls: list) -> DistributedDataParallel:
    ddp = DistributedDataParallel(module)
    ddp.register_comm_hook(calls, _counting_allreduce)
    return ddp


def _rank_step(env: DistEnv, chunk: int | None, trainable_text: bool, parallel: str) -> dict:
    image_enc, text_enc, scale = _models()
    images, text_emb, tokens = _data()
    per_rank = check_global_batch(GLOBAL_BATCH, env.world_size, chunk)
    local = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
    image_calls, text_calls = [], []
    if parallel == "fsdp":  # sharded in place: the modules are their own wrappers
        ddp_image = shard_tower(image_enc)
        ddp_text = shard_tower(text_enc) if trainable_text else None
    else:
        ddp_image = _ddp(image_enc, image_calls)
        ddp_text = _ddp(text_enc, text_calls) if trainable_text else None
    gather = functools.partial(gather_with_grad, env=env)

    torch.manual_seed(SEED + env.rank)
    if chunk is None:
        img = ddp_image(images[local])
        txt = ddp_text(tokens[local]) if trainable_text else text_emb[local]
        loss_t = contrastive_loss(gather(img), gather(txt), scale())
        loss_t.backward()
        loss = loss_t.item()
    else:
        text_side = Trainable(ddp_text, tokens[local]) if trainable_text else text_emb[local]
        loss = cached_backward(
            [Trainable(ddp_image, images[local]), text_side],
            lambda img, txt: contrastive_loss(img, txt, scale()),
            chunk,
            gather,
        ).item()
    average_gradients(scale.parameters(), env)  # the logit scale lives outside DDP
    modules = (image_enc, text_enc, scale) if trainable_text else (image_enc, scale)
    tensors, saved = _adamw_step(*modules, clip=CLIP if parallel == "fsdp" else None)
    result = {
        "loss": loss,
        "image_allreduces": len(image_calls),
        "text_allreduces": len(text_calls),
        "sharded": [is_sharded(m) for m in modules],
        **tensors,
    }
    if parallel == "fsdp":
        result["reloaded"] = _reload_sharded(env, modules, saved, trainable_text)
    return result


def _from_rank0(obj):
    """Rank 0's `obj` on every rank (full_state_dict gives whole tensors to rank 0 only)."""
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reload_sharded(env: DistEnv, modules: tuple[nn.Module, ...], saved: dict, trainable_text: bool) -> bool:
    """A checkpoint's whole tensors (read by every rank) loaded into freshly sharded copies give
    back the same weights and optimizer state."""
    weights = [_from_rank0(full_state_dict(m)) for m in modules]
    saved = _from_rank0(saved)
    image_enc, text_enc, scale = _models()
    fresh = (
        (shard_tower(image_enc), shard_tower(text_enc), scale) if trainable_text else (shard_tower(image_enc), scale)
    )
    for module, state in zip(fresh, weights):
        load_full_state_dict(module, state)
    optimizer = _adamw(fresh)
    load_optimizer_state_dict({str(i): m for i, m in enumerate(fresh)}, optimizer, saved)
    again = optimizer_state_dict({str(i): m for i, m in enumerate(fresh)}, optimizer)
    reloaded = [full_state_dict(m) for m in fresh]  # collectives: every rank takes part
    if not env.is_main:
        return True  # only rank 0 receives whole tensors to compare
    same_weights = all(
        torch.equal(a, b) for r, w in zip(reloaded, weights) for a, b in zip(r.values(), w.values(), strict=True)
    )
    same_moments = all(
        torch.equal(torch.as_tensor(v), torch.as_tensor(again["state"][name][key]))
        for name, moments in saved["state"].items()
        for key, v in moments.items()
    )
    same_groups = json.dumps(again["param_groups"]) == json.dumps(saved["param_groups"])  # tuples read back as lists
    return same_weights and same_moments and same_groups


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share two cores
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    env = init_distributed("gloo", device="cpu", timeout=timedelta(seconds=60))
    try:
        result = {name: _rank_step(env, *scenario) for name, scenario in SCENARIOS.items()}
        result["env"] = (env.rank, env.world_size, env.local_rank, env.is_main, str(dist.get_backend()))
        barrier(env)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown()


# ---------------------------------------------------------------- the single-process reference


def _reference_step(chunk: int | None, trainable_text: bool, parallel: str) -> dict[str, torch.Tensor]:
    image_enc, text_enc, scale = _models()
    images, text_emb, tokens = _data()
    per_rank = GLOBAL_BATCH // WORLD
    step = chunk or per_rank
    img_parts, txt_parts = [], []
    for rank in range(WORLD):  # replay each rank's RNG stream over its half, chunk by chunk
        torch.manual_seed(SEED + rank)
        starts = range(rank * per_rank, (rank + 1) * per_rank, step)
        img_parts += [image_enc(images[s : s + step]) for s in starts]
        if trainable_text:
            txt_parts += [text_enc(tokens[s : s + step]) for s in starts]
    txt = torch.cat(txt_parts) if trainable_text else text_emb
    loss = contrastive_loss(torch.cat(img_parts), txt, scale())
    loss.backward()
    modules = (image_enc, text_enc, scale) if trainable_text else (image_enc, scale)
    return {"loss": loss.item(), **_adamw_step(*modules, clip=CLIP if parallel == "fsdp" else None)[0]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_processes_equal_one_process_on_the_global_batch(ranks, scenario):
    ref = _reference_step(*SCENARIOS[scenario])
    for rank, result in enumerate(ranks):
        got = result[scenario]
        fsdp = scenario.startswith("fsdp")
        assert got["sharded"] == [fsdp, *([fsdp] if "trainable" in scenario else []), False]
        assert got.get("reloaded", True) is True
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-12)
        # A sharded optimizer's whole state (what the checkpoint holds) reaches rank 0 only.
        mine = [k for k in ref if k != "loss" and (rank == 0 or not fsdp or not k.startswith("adam/"))]
        assert mine == [k for k in got if k.startswith(("grad/", "weight/", "norm", "adam/"))]
        keys = mine
        assert any("logit" not in k and "0.value" not in k for k in keys)
        torch.testing.assert_close({k: got[k] for k in keys}, {k: ref[k] for k in keys}, **TIGHT)


@pytest.mark.parametrize("trainable_text", [False, True])
def test_gradient_cache_all_reduces_once_per_step(ranks, trainable_text):
    """no_sync on all but the last chunk: DDP communicates as often as in a plain step
    (once per gradient bucket), not once per chunk."""
    text = "trainable" if trainable_text else "frozen"
    for result in ranks:
        plain, cached = result[f"ddp-plain-{text}-text"], result[f"ddp-gradcache-{text}-text"]
        assert plain["image_allreduces"] >= 1
        assert cached["image_allreduces"] == plain["image_allreduces"]
        assert cached["text_allreduces"] == plain["text_allreduces"] == (1 if trainable_text else 0)


def test_process_group_helpers(ranks):
    assert [r["env"] for r in ranks] == [(0, 2, 0, True, "gloo"), (1, 2, 1, False, "gloo")]


# ---------------------------------------------------------------- single-process pieces


def test_check_global_batch():
    assert check_global_batch(8, 2) == 4
    assert check_global_batch(8, 2, grad_cache_chunk=2) == 4
    assert check_global_batch(7, 1, grad_cache_chunk=7) == 7
    with pytest.raises(ValueError, match=r"global batch 10 does not split evenly over 4 processes.*8 or 12"):
        check_global_batch(10, 4)
    with pytest.raises(ValueError, match=r"chunk 3 does not divide the per-process batch 4 \(8 / 2 processes\)"):
        check_global_batch(8, 2, grad_cache_chunk=3)
    with pytest.raises(ValueError, match="at least 1"):
        check_global_batch(0, 2)
    with pytest.raises(ValueError, match="at least 1"):
        check_global_batch(8, 2, grad_cache_chunk=0)


_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in _LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("variables", [{}, {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}])
def test_single_process_needs_no_process_group(clean_env, variables):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    env = init_distributed(device="cpu")
    assert env == DistEnv(0, 1, 0, torch.device("cpu"))
    assert env.is_main and not env.is_distributed
    assert not dist.is_initialized()
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x, env) is x
    barrier(env)
    average_gradients([nn.Parameter(torch.ones(1))], env)
    shutdown()


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"RANK": "1"}, "RANK is set .1. but WORLD_SIZE is not"),
        ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be at least 1"),
        ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK is 1 but WORLD_SIZE is 1"),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
            r"RANK must be in \[0, 2\)",
        ),
    ],
)
def test_bad_launch_environment_fails_before_joining(clean_env, variables, message):
    for name, value in variables.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        init_distributed(device="cpu")
    assert not dist.is_initialized()


def test_nccl_without_cuda_is_refused(clean_env):
    for name, value in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        init_distributed("nccl", device="cpu")
