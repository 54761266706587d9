"""Frozen-backbone training at the speed of its head: steps/s of the default model's head trained
from the feature table in memory, against the same steps fed the way they were before (the
training shards streamed through a DataLoader worker every step, images decoded only to be
skipped, features looked up in the on-disk cache by key). Same Trainer, same head, same batch of
256, one process, the two alternating.

    .venv/bin/python benchmarks/head_training.py [--steps 150] [--rounds 2]

Needs `make demo` first (the emoji corpus and the filled feature cache; the run here writes only
to a temporary folder). Prints the machine first and the ratio last (goal: at least 5).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py
from torch.utils.data import DataLoader

from latentspace.config import load_config
from latentspace.data.shards import ImageTextStream
from latentspace.process_state import kept_signal_handlers
from latentspace.train.batches import no_pixels
from latentspace.train.loop import Trainer


def streamed(trainer: Trainer):
    """Batches as the shards gave them before the feature table: decoded, pixels dropped, and the
    features of each batch's keys read from the on-disk cache."""
    cfg = trainer.cfg
    stream = ImageTextStream(
        urls=trainer.urls,
        transform=no_pixels,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        caption_mode=cfg.data.caption,
        shuffle_buffer=cfg.data.shuffle_buffer,
        num_workers=1,
    )
    for batch in DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4):
        batch["features"] = trainer.sides.caches["frozen backbone"].lookup(batch["keys"])
        yield batch


def steps_per_s(trainer: Trainer, batches, steps: int) -> float:
    trainer.step(next(batches))  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step(next(batches))
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="artifacts/quickstart/config.yaml")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(describe())
    out = Path(tempfile.mkdtemp(prefix="bench-head-"))
    cfg = load_config(args.config, [f"train.output_dir={out}"])
    trainer = Trainer(cfg)
    table_rates, stream_rates = [], []
    with kept_signal_handlers():
        for _ in range(args.rounds):
            step = iter(trainer.sides.table.batch(s, cfg.train.batch_size) for s in range(10**9))
            table_rates.append(steps_per_s(trainer, step, args.steps))
            stream_rates.append(steps_per_s(trainer, streamed(trainer), args.steps))
    head = sum(p.numel() for p in trainer.sides.vision.proj.parameters())
    print(f"head: {head / 1e6:.1f}M parameters, batch {cfg.train.batch_size}, {torch.get_num_threads()} threads")
    print(f"streamed from shards (before): {max(stream_rates):.1f} steps/s")
    print(f"feature table in memory (now): {max(table_rates):.1f} steps/s")
    print(f"feature table / streamed: {max(table_rates) / max(stream_rates):.2f}x")


if __name__ == "__main__":
    main()
