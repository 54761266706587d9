import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentspace.config import dump_config
from latentspace.models.model_dir import read_model_config
from latentspace.train.loop import train

import fakes
from fakes import tiny_config


@pytest.fixture
def shards(tmp_path):
    return fakes.brace(fakes.write_shards(tmp_path / "shards", n_shards=2, per_shard=20, corrupt=1))


def test_training_writes_model_metrics_and_curve(tmp_path, shards, text_tower):
    result = train(tiny_config(tmp_path, shards))
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "images_per_s", "skipped"} <= set(records[0])
    assert (run / "loss.png").stat().st_size > 1000
    cfg = read_model_config(result.model_dir)
    assert cfg.space.fingerprint == text_tower.space.fingerprint
    assert result.samples_skipped >= 1  # the corrupt sample was counted


def test_resume_with_a_different_config_is_refused(tmp_path, shards):
    train(tiny_config(tmp_path, shards, steps=2))
    with pytest.raises(RuntimeError, match="optim.lr"):
        train(tiny_config(tmp_path, shards, "optim.lr=0.5", steps=2))


def _weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("workers", [0, 1])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, shards, workers):
    """Kill -9 a training process after its first checkpoint; the same command resumes and
    ends with exactly the weights of a run that was never interrupted."""
    steps = 150  # long enough (tiny model, ~10 ms a step) that the kill lands mid-run
    train(tiny_config(tmp_path / "ref", shards, steps=steps, workers=workers))

    cfg = tiny_config(tmp_path / "killed", shards, "train.checkpoint_every=5", steps=steps, workers=workers)
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(dump_config(cfg))
    run = Path(cfg.train.output_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentspace.train", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert 5 <= killed_at < steps

    resumed = train(cfg)
    assert resumed.resumed_from == killed_at
    ref, got = _weights(tmp_path / "ref" / "run"), _weights(run)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)


def test_resume_into_a_changed_text_model_is_refused(tmp_path, shards):
    from latentspace.space import SpaceMismatchError

    cfg = tiny_config(tmp_path, shards, steps=2)
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    state["space"]["fingerprint"] = "0" * 16  # as if the text model's files had changed since
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(SpaceMismatchError, match="checkpoint"):
        train(cfg)


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path, shards):
    cfg = tiny_config(tmp_path, shards, steps=2)
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    del state["config"]["text"]["trust_remote_code"]  # written by a version without that field
    torch.save(state, tmp_path / "run" / "checkpoint.pt")
    assert train(cfg).resumed_from == 2


def test_bf16_autocast_with_gradcache_and_checkpointing_trains_close_to_fp32(tmp_path, shards):
    """The GPU path's numerics, on CPU: bf16 autocast around the tower, GradCache chunks and
    activation checkpointing together land near the fp32 run, and not on it (bf16 really ran)."""
    train(tiny_config(tmp_path / "fp32", shards, steps=3))
    train(
        tiny_config(
            tmp_path / "bf16",
            shards,
            "train.precision=bf16",
            "train.grad_cache_chunk=2",
            "vision.grad_checkpointing=true",
            steps=3,
        )
    )
    ref, got = _weights(tmp_path / "fp32" / "run"), _weights(tmp_path / "bf16" / "run")
    assert all(got[k].dtype == torch.float32 for k in got)  # weights stay fp32 under autocast
    torch.testing.assert_close(got, ref, rtol=0, atol=0.02)
    assert any(not torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_vision_tower_trains_like_eager(tmp_path, shards):
    train(tiny_config(tmp_path / "eager", shards, steps=3))
    train(tiny_config(tmp_path / "compiled", shards, "train.compile=true", steps=3))
    torch.testing.assert_close(
        _weights(tmp_path / "compiled" / "run"), _weights(tmp_path / "eager" / "run"), rtol=1e-4, atol=1e-5
    )
