"""Why the text cache exists: one locked-text training step with cached caption embeddings versus
the same step running the frozen text tower on the batch's captions (what a trainer without the
cache does). Both in this process, same model, same batch; prints the speed-up ratio last.

    .venv/bin/python benchmarks/text_cache_step.py [--batch-size 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from latentspace.config import TextTowerConfig, load_config
from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import VisionTower
from latentspace.quickstart import packaged_config
from latentspace.train.loss import LogitScale, contrastive_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    cfg = load_config(packaged_config(), ["data.train_shards=unused"])
    text = TextTower(TextTowerConfig())
    vision = VisionTower(cfg.vision, text.dim)
    scale = LogitScale()
    opt = torch.optim.AdamW(list(vision.parameters()) + list(scale.parameters()), lr=1e-3)
    size = cfg.vision.image_size
    images = torch.randn(args.batch_size, 3, size, size)
    captions = [f"an emoji of concept number {i}, a kind of thing" for i in range(args.batch_size)]
    cache = EmbeddingCache(tempfile.mkdtemp(), text.space, "search_query")
    cache.fill(captions, lambda c: text.encode(c, "search_query"))

    def step(text_emb_fn) -> float:
        t = time.perf_counter()
        loss = contrastive_loss(vision(images), text_emb_fn(), scale())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    def timed(fn) -> float:
        step(fn)  # warm-up
        return statistics.median(step(fn) for _ in range(args.repeats))

    live = timed(lambda: text.encode(captions, "search_query"))
    cached = timed(lambda: cache.lookup(captions))
    print(f"batch {args.batch_size}, vision {cfg.vision.arch} @ {size}px, threads {torch.get_num_threads()}")
    print(f"step with the text tower run live: {live:.3f} s  ({args.batch_size / live:.0f} images/s)")
    print(f"step with cached text embeddings:  {cached:.3f} s  ({args.batch_size / cached:.0f} images/s)")
    print(f"speed-up from the text cache: {live / cached:.2f}x")


if __name__ == "__main__":
    main()
