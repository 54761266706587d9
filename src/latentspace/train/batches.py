"""Where a training process's batches come from.

Streamed: the shards, read by DataLoader workers (data/shards.py), each process its own share of
every global batch, each stream resuming where its role stood (train/positions.py). From memory:
a frozen-backbone run draws each step's batch from the feature table (train/feature_table.py).
Either way a step's batch depends only on the seed and the step, so a resumed run sees the batches
an uninterrupted one would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from latentspace.config import RunConfig
from latentspace.data.shards import ImageTextStream
from latentspace.data.transforms import Preprocess, load_transform
from latentspace.train.distributed import DistEnv
from latentspace.train.feature_table import FeatureTable
from latentspace.train.positions import DataPositions


def no_pixels(image) -> torch.Tensor:
    """The transform of a run that needs no pixels: the image was decoded (so an undecodable one
    is still skipped, as the frozen tower's cache skipped it), and is dropped."""
    return torch.zeros(0, dtype=torch.uint8)


def streamed(
    cfg: RunConfig,
    urls: list[str],
    env: DistEnv,
    local_batch: int,
    workers: int,
    positions: DataPositions,
    preprocess: Preprocess | None,
) -> DataLoader:
    """This process's batches, streamed from the shards from where `positions` stand; with
    `preprocess` None, without pixels (every image embedding comes from a frozen tower's cache)."""
    d = cfg.data
    stream = ImageTextStream(
        urls=urls,
        transform=no_pixels if preprocess is None else load_transform(preprocess),
        batch_size=local_batch,
        seed=cfg.train.seed,
        caption_mode=d.caption,
        shuffle_buffer=d.shuffle_buffer,
        rank=env.rank,
        world_size=env.world_size,
        num_workers=workers,
        positions=positions.positions,
        first_role=positions.next_role,
    )
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def from_table(table: FeatureTable, first_step: int, global_batch: int, env: DistEnv) -> Iterator[dict]:
    """This process's share of every step's batch from `first_step` on, from the table in memory."""
    return (table.batch(step, global_batch, env.rank, env.world_size) for step in itertools.count(first_step))
