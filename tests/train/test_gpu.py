"""The GPU path of the trainer: CUDA device, bf16 autocast, fused AdamW, torch.compile, gradient
checkpointing, pinned-memory loading, GradCache's CUDA RNG replay, and NCCL across GPUs.

Skipped where CUDA is absent (CI, the 2-core dev machine); `benchmarks/gpu_checks.sh` runs them
on a GPU machine together with the throughput benchmark."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from latentspace.config import dump_config
from latentspace.train.loop import Trainer, train

import fakes
from fakes import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fakes.brace(fakes.write_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16))


def test_bf16_compiled_checkpointed_training_runs_and_resumes(tmp_path, shards):
    cfg = tiny_config(
        tmp_path,
        shards,
        "train.device=cuda",
        "train.precision=bf16",
        "train.compile=true",
        "vision.grad_checkpointing=true",
        steps=4,
        workers=1,
    )
    trainer = Trainer(cfg)
    assert trainer.device.type == "cuda"
    assert trainer.optimizer.defaults["fused"] is True
    result = trainer.run()
    assert math.isfinite(result.final_loss) and result.steps == 4
    again = train(cfg)  # same config: resumes at the last checkpoint, nothing left to do
    assert again.resumed_from == 4


def test_gradient_cache_replays_cuda_dropout_and_drop_path():
    """GradCache's step (c) must redraw the CUDA RNG exactly as step (a) did: the gradients equal one
    plain backward over the same chunks (float64, as tests/train/test_gradcache.py does on CPU)."""
    import test_gradcache as cpu

    image_enc, _, scale = cpu._towers(drop=0.2)
    image_enc.cuda(), scale.cuda()
    images, text_emb, _ = (t.cuda() for t in cpu._data(16))
    torch.manual_seed(7)
    cpu._reference(image_enc, scale, images, forward_chunk=4, text_emb=text_emb)
    ref = cpu._grads(image_enc, scale)
    cpu._zero(image_enc, scale)
    torch.manual_seed(7)
    cpu._image_text_step(image_enc, images, scale, 4, text_emb)
    torch.testing.assert_close(cpu._grads(image_enc, scale), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across processes needs two GPUs")
def test_two_gpus_under_nccl_train_once(tmp_path, shards):
    config = tmp_path / "config.yaml"
    config.write_text(
        dump_config(
            tiny_config(tmp_path, shards, "train.device=cuda", "train.precision=bf16", "train.parallel=fsdp", steps=3)
        )
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "-m",
            "latentspace.train",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
