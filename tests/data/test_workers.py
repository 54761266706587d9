"""data.workers: auto sizes DataLoader workers to the CPUs each training process may use."""

from __future__ import annotations

import pytest

from latentspace.config import DataConfig
from latentspace.data import workers
from latentspace.data.workers import MAX_TRAIN_WORKERS, auto_train_workers
from latentspace.train.loop import Trainer

import fakes


@pytest.mark.parametrize(
    ("cpus", "processes", "expected"),
    [
        (1, 1, 0),  # nothing to spare: decode in the training process
        (2, 1, 1),
        (16, 1, MAX_TRAIN_WORKERS),
        (16, 8, 1),  # eight GPUs on a 16-core node: two cores each
        (64, 8, 7),
        (4, 8, 0),  # more processes than cores
    ],
)
def test_auto_workers_take_this_process_share_less_one(monkeypatch, cpus, processes, expected):
    monkeypatch.setattr(workers, "available_cpus", lambda: cpus)
    assert auto_train_workers(processes) == expected


def test_processes_on_the_node_come_from_torchrun(monkeypatch):
    monkeypatch.setattr(workers, "available_cpus", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_train_workers() == 7
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert auto_train_workers() == MAX_TRAIN_WORKERS


def test_config_accepts_auto_or_a_count():
    assert DataConfig(train_shards="x", workers="auto").workers == "auto"
    assert DataConfig(train_shards="x", workers=3).workers == 3
    for bad in (-1, "many"):
        with pytest.raises(ValueError, match="workers"):
            DataConfig(train_shards="x", workers=bad)


def test_the_trainer_resolves_auto(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "available_cpus", lambda: 3)
    shards = fakes.brace(fakes.write_shards(tmp_path / "shards", n_shards=2, per_shard=8))
    trainer = Trainer(fakes.tiny_config(tmp_path, shards, "data.workers=auto"))
    assert trainer.workers == 2 and trainer.n_roles == 2
