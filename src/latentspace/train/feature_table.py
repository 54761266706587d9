"""A frozen-backbone run's training data in memory, so the head trains at the speed of its matmuls.

With `vision.freeze_backbone` a training step needs no pixels: one feature row per image, computed
once into the feature cache, and one caption per image. Both fit in memory (the emoji corpus:
5,858 x 1,280 floats, 30 MB), so the shards are read once, here, instead of streamed through a
DataLoader worker every step, which decoded every image again only to drop its pixels: nine
tenths of a step's time went there.

The order is the stream's own (data/shards.py, as one reader sees it): each epoch the shard list is
shuffled with (seed, epoch), the samples pass the same shuffle buffer with the same generator,
samples without a caption or a decodable image are passed over, and captions are drawn with the
generator the stream seeds by the sample's position. So a run trains on exactly the batches it
would have streamed (the same model, bit for bit, from the same feature cache), and a step's batch
is a function of (seed, step) alone: a resumed run continues exactly, and N processes each take
their slice of the same global batch. (The order matters beyond reproducibility: a full
permutation per epoch, tried first, cost the default model two points on held-out concepts of the
unseen art style; docs/training.md.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.data.shards import ErrorCounter, caption_options, iter_raw_samples, sample_id, sample_seed, shuffled


@dataclass
class FeatureTable:
    keys: list[str]  # sample ids of the usable samples, as the feature cache keys them
    features: torch.Tensor  # (N, width): each usable sample's backbone features
    captions: list[list[str]]  # the captions each usable sample may be paired with
    shards: list[tuple[str, list[int | None]]]  # per shard, in the given order: each sample's row (None: unusable)
    seed: int
    shuffle_buffer: int
    skipped: int = 0  # samples without a caption, or whose image did not decode
    _epochs: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(
        cls, urls: list[str], features: EmbeddingCache, caption_mode: str, seed: int, shuffle_buffer: int
    ) -> FeatureTable:
        """Every training sample, in shard order; those with a caption and a cached feature row
        (the cache holds the images that decoded) get a row of the table."""
        keys: list[str] = []
        captions: list[list[str]] = []
        shards: dict[str, list[int | None]] = {url: [] for url in urls}
        skipped = 0
        for sample in iter_raw_samples(urls, ErrorCounter()):
            key = sample_id(sample)
            options = caption_options(sample, caption_mode)
            row: int | None = None
            if options and key in features:
                row = len(keys)
                keys.append(key)
                captions.append(options)
            else:
                skipped += 1
            shards[sample["__url__"]].append(row)
        if not keys:
            raise ValueError(f"no training sample has both a caption and a decodable image in {len(urls)} shard(s)")
        return cls(keys, features.lookup(keys), captions, list(shards.items()), seed, max(1, shuffle_buffer), skipped)

    def __len__(self) -> int:
        return len(self.keys)

    def _epoch(self, epoch: int) -> tuple[list[int], list[int]]:
        """The rows of one epoch in the stream's order, and each one's position in the stream
        (which seeds its caption draw)."""
        if epoch not in self._epochs:
            self._epochs = {e: v for e, v in self._epochs.items() if e >= epoch - 1}  # a step spans two at most
            order = list(self.shards)
            random.Random(sample_seed(self.seed, epoch)).shuffle(order)
            stream = (row for _, rows in order for row in rows)
            rows, positions = [], []
            mixed = shuffled(stream, self.shuffle_buffer, random.Random(sample_seed(self.seed, epoch, 0, 7)))
            for position, row in enumerate(mixed):
                if row is not None:
                    rows.append(row)
                    positions.append(position)
            self._epochs[epoch] = (rows, positions)
        return self._epochs[epoch]

    def batch(self, step: int, global_batch: int, rank: int = 0, world_size: int = 1) -> dict:
        """This rank's share of step `step`'s global batch: features, captions and sample keys."""
        local = global_batch // world_size
        start = step * global_batch + rank * local
        rows, captions = [], []
        for p in range(start, start + local):
            epoch, within = divmod(p, len(self))
            order, positions = self._epoch(epoch)
            row = order[within]
            options = self.captions[row]
            if len(options) > 1:  # as the stream draws it (data.shards.read_caption)
                seed = sample_seed(self.seed, epoch, 0, positions[within])
                options = [random.Random(seed).choice(options)]
            rows.append(row)
            captions.append(options[0])
        return {"features": self.features[rows], "captions": captions, "keys": [self.keys[r] for r in rows]}
