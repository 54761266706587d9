"""A frozen-backbone run's training data in memory, so the head trains at the speed of its matmuls.

With `vision.freeze_backbone` a training step needs no pixels: one feature row per image, computed
once into the feature cache, and one caption per image. Both fit in memory (the emoji corpus:
5,858 x 1,280 floats, 30 MB), so the shards are read once, here, instead of streamed through
DataLoader workers every step (which decoded every image again only to skip its pixels: nine
tenths of a step's time went there).

Batches are a function of (seed, step) alone. Epoch e is a permutation of all samples seeded by
(seed, e); step s takes the next global batch of that endless sequence, and draws each sample's
caption (caption mode random) with a generator seeded by (seed, step). A resumed run therefore
continues exactly where it stopped, and N processes each take their slice of the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latentspace.data.shards import ErrorCounter, caption_options, iter_raw_samples, sample_id, sample_seed
from latentspace.data.text_cache import TextEmbeddingCache


@dataclass
class FeatureTable:
    keys: list[str]  # sample ids, as the feature cache keys them
    features: torch.Tensor  # (N, width): each sample's backbone features
    captions: list[list[str]]  # the captions each sample may be paired with
    seed: int
    skipped: int = 0  # samples without a caption, or whose image did not decode
    _permutations: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._n_options = torch.tensor([len(options) for options in self.captions])

    @classmethod
    def read(cls, urls: list[str], features: TextEmbeddingCache, caption_mode: str, seed: int) -> FeatureTable:
        """Every training sample that has a caption and a cached feature row (the cache holds the
        images that decoded), in shard order."""
        keys, captions, skipped = [], [], 0
        seen: set[str] = set()
        for sample in iter_raw_samples(urls, ErrorCounter()):
            key = sample_id(sample)
            if key in seen:
                continue
            seen.add(key)
            options = caption_options(sample, caption_mode)
            if not options or key not in features:
                skipped += 1
                continue
            keys.append(key)
            captions.append(options)
        if not keys:
            raise ValueError(f"no training sample has both a caption and a decodable image in {len(urls)} shard(s)")
        return cls(keys, features.lookup(keys), captions, seed, skipped)

    def __len__(self) -> int:
        return len(self.keys)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}  # keep two
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 11))
            self._permutations[epoch] = torch.randperm(len(self), generator=generator)
        return self._permutations[epoch]

    def batch(self, step: int, global_batch: int, rank: int = 0, world_size: int = 1) -> dict:
        """This rank's share of step `step`'s global batch: features, captions and sample keys."""
        local = global_batch // world_size
        positions = torch.arange(step * global_batch + rank * local, step * global_batch + (rank + 1) * local)
        epochs, within = positions // len(self), positions % len(self)
        index = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            chosen = epochs == epoch
            index[chosen] = self._permutation(epoch)[within[chosen]]
        draws = torch.rand(global_batch, generator=torch.Generator().manual_seed(sample_seed(self.seed, step, 13)))
        pick = (draws[rank * local : (rank + 1) * local] * self._n_options[index]).long()
        rows = index.tolist()
        return {
            "features": self.features[index],
            "captions": [self.captions[i][c] for i, c in zip(rows, pick.tolist())],
            "keys": [self.keys[i] for i in rows],
        }
