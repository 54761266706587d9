"""`torchrun --nproc_per_node 2 -m latentspace.train CONFIG` on CPUs (gloo): one checkpoint and
one model written, resumable on another number of processes, bad splits refused before any
step, and a killed worker stops the job, which then resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentspace.config import dump_config

import fakes
from fakes import tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fakes.brace(fakes.write_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=16))


def _config_file(tmp_path: Path, shards: str, *overrides: str, steps: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(tiny_config(tmp_path, shards, *overrides, steps=steps)))
    return path


def _torchrun(nproc: int, config: Path, *extra: str, wait: bool = True):
    with socket.socket() as probe:  # torchrun's static rendezvous needs a concrete free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(port),
        "-m",
        "latentspace.train",
        str(config),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_processes_train_once_and_resume_on_one(tmp_path, shards):
    config = _config_file(tmp_path, shards, "train.batch_size=8", "train.checkpoint_every=2", steps=4)
    done = _torchrun(2, config)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "run"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # logged by rank 0 only
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["data"]["roles"] == 2 and sorted(state["data"]["positions"]) == [0, 1]
    assert (run / "model" / "model.safetensors").is_file()
    # the same run, continued by a single process: weights resume, data restarts an epoch
    again = subprocess.run(
        [sys.executable, "-m", "latentspace.train", str(config), "train.steps=4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "data restarts at epoch" in again.stdout + again.stderr


def test_a_global_batch_the_processes_cannot_split_is_refused(tmp_path, shards):
    config = _config_file(tmp_path, shards, "train.batch_size=9", steps=2)
    done = _torchrun(2, config)
    assert done.returncode != 0
    assert "global batch 9 does not split evenly over 2 processes" in done.stdout + done.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_killed_worker_stops_the_job_and_the_rerun_resumes(tmp_path, shards):
    config = _config_file(tmp_path, shards, "train.batch_size=8", "train.checkpoint_every=5", steps=300)
    job = _torchrun(2, config, wait=False)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert job.poll() is None, job.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-f", "-P", str(job.pid), "latentspace.train"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split()]
    assert pids, "no worker processes found"
    os.kill(pids[-1], signal.SIGKILL)
    output, _ = job.communicate(timeout=120)
    assert job.returncode != 0, output  # the job stops instead of hanging
    saved = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < saved < 300
    done = _torchrun(2, config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stdout + done.stderr
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 301))  # continued after the checkpoint, not retrained from step 1
    assert torch.load(checkpoint, weights_only=False)["step"] == 300


def test_fsdp_trains_like_ddp_and_its_checkpoint_resumes_unsharded(tmp_path, shards, text_tower):
    """recipe both (vision and text towers trained, both sharded under FSDP): after 3 steps the
    saved towers equal a DDP run's, and one process resumes the FSDP checkpoint."""
    pretrained = fakes.save_tiny_model_dir(tmp_path / "pretrained", text_tower)
    runs = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        out.mkdir()
        config = _config_file(
            out,
            shards,
            "recipe=both",
            f"vision.init_from={pretrained}",
            f"train.parallel={parallel}",
            "optim.text_lr=1e-4",
            steps=3,
        )
        done = _torchrun(2, config)
        assert done.returncode == 0, done.stdout + done.stderr
        runs[parallel] = (config, out / "run")
    ddp, fsdp = (runs[p][1] / "model" for p in ("ddp", "fsdp"))
    torch.testing.assert_close(
        load_file(fsdp / "model.safetensors"), load_file(ddp / "model.safetensors"), rtol=1e-4, atol=1e-5
    )
    text = "all-MiniLM-L6-v2-both/model.safetensors"
    torch.testing.assert_close(load_file(fsdp / text), load_file(ddp / text), rtol=1e-4, atol=1e-5)
    state = torch.load(runs["fsdp"][1] / "checkpoint.pt", weights_only=False)
    assert all(isinstance(t, torch.Tensor) and not hasattr(t, "placements") for t in state["vision"].values())
    assert all(isinstance(k, str) for k in state["optimizer"]["state"])  # keyed by parameter name
    # one plain process reads the FSDP checkpoint (weights, optimizer) and writes the same model
    trained = load_file(fsdp / "model.safetensors")
    again = subprocess.run(
        [sys.executable, "-m", "latentspace.train", str(runs["fsdp"][0]), "train.parallel=ddp"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout + again.stderr
    torch.testing.assert_close(load_file(fsdp / "model.safetensors"), trained, rtol=0, atol=0)


def test_fsdp_with_bf16_mixed_precision_and_gradcache_trains(tmp_path, shards):
    """FSDP's bf16 policy (parameters gathered in bf16, gradients reduced in fp32) with GradCache's
    deferred gradient sync, under real torchrun; the checkpoint holds whole fp32 tensors."""
    config = _config_file(
        tmp_path,
        shards,
        "train.batch_size=8",
        "train.parallel=fsdp",
        "train.precision=bf16",
        "train.grad_cache_chunk=2",
        steps=3,
    )
    done = _torchrun(2, config)
    assert done.returncode == 0, done.stdout + done.stderr
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    assert all(t.dtype == torch.float32 and not hasattr(t, "placements") for t in state["vision"].values())
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
