"""Streaming image-text pairs from webdataset shards (img2dataset layout), resumable exactly.

Samples flow: shard list (shuffled per epoch) -> split across ranks and DataLoader workers ->
tar members grouped into samples -> seeded shuffle buffer -> skip what a resumed run already
consumed -> decode + a deterministic transform -> batches. (Random augmentation happens later,
on whole batches, in the training step.)

Each DataLoader worker plays a fixed *role*. A role's stream depends only on (seed, epoch, role),
and captions are drawn with a generator seeded by the sample's position, so a run that resumes
from a checkpoint sees exactly the batches an uninterrupted run would have seen.
Corrupt samples are skipped and counted (the count rides along with every batch), never fatal.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from latentspace.data.images import IMAGE_EXTENSIONS, ImageDecodeError, decode_image


def expand_urls(spec: str | list[str]) -> list[str]:
    """Brace patterns (`shard-{000000..000009}.tar`), `::`-separated lists, pipe: commands, http(s).
    Local paths are checked up front so a typo fails before training starts."""
    specs = spec if isinstance(spec, list) else [spec]
    urls = [u for s in specs for u in wds.shardlists.expand_urls(s)]
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"shard not found: {', '.join(missing[:3])}{more}")
    return urls


@dataclass
class StreamPosition:
    """Where one role's stream stands: enough to resume it exactly."""

    epoch: int = 0
    consumed: int = 0  # samples taken from this epoch's shuffled stream (valid or not)
    skipped: int = 0  # samples skipped as corrupt or captionless, all epochs
    shard_errors: int = 0  # unreadable or truncated tar members/shards, all epochs


@dataclass
class ErrorCounter:
    """A webdataset handler that counts read errors and carries on."""

    count: int = 0
    last: str = ""

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        self.last = f"{type(exn).__name__}: {exn}"
        return True


def sample_seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


T = TypeVar("T")


def shuffled(items: Iterator[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """Reservoir-style shuffle buffer with our own RNG, so the order is reproducible."""
    pool: list[T] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def _json_captions(sample: dict) -> list[str]:
    """The non-empty strings in the sample's json `captions` list ([] when absent or malformed)."""
    try:
        captions = json.loads(sample["json"]).get("captions", []) if "json" in sample else []
    except (ValueError, AttributeError):
        return []
    return [c for c in captions if isinstance(c, str) and c.strip()]


def read_caption(sample: dict, mode: str, rng: random.Random | None = None) -> str:
    """The caption for a sample: `txt`, or with mode=random one of the json `captions`."""
    options = _json_captions(sample) if mode == "random" else []
    if options:
        return (rng or random).choice(options)
    raw = sample.get("txt", b"")
    return (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)).strip()


def sample_id(sample: dict) -> str:
    """A sample's identity across shards: shard URL and key (keys alone repeat between shards)."""
    return f"{sample.get('__url__', '?')}#{sample.get('__key__', '')}"


def iter_raw_samples(urls: list[str], handler: Callable[[Exception], bool]) -> Iterator[dict]:
    return wds.tarfile_to_samples(handler=handler)(iter({"url": u} for u in urls))


def caption_options(sample: dict, mode: str) -> list[str]:
    """The captions `read_caption` may draw for a sample ([] when it has none)."""
    options = _json_captions(sample) if mode == "random" else []
    if options:
        return options
    caption = read_caption(sample, "name")
    return [caption] if caption else []


def iter_captions(urls: list[str], mode: str) -> Iterator[str]:
    """Every caption the training stream could draw, without decoding a single image
    (the same choices `read_caption` makes, so the text cache never misses)."""
    for sample in iter_raw_samples(urls, ErrorCounter()):
        yield from caption_options(sample, mode)


@dataclass
class ImageTextStream(IterableDataset):
    """Infinite stream of ready batches: dict(images, captions, keys, role, position)."""

    urls: list[str]
    transform: Callable
    batch_size: int
    seed: int = 0
    caption_mode: str = "random"
    shuffle_buffer: int = 2000
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0  # must equal the DataLoader's, to fix the number of roles
    positions: dict[int, StreamPosition] = field(default_factory=dict)
    first_role: int = 0  # role that produces the next batch (DataLoader serves workers round-robin)

    def __post_init__(self) -> None:
        super().__init__()

    @property
    def roles_per_rank(self) -> int:
        return max(1, self.num_workers)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid = info.id if info else 0
        if info and info.num_workers != self.roles_per_rank:
            raise RuntimeError("ImageTextStream.num_workers must match the DataLoader's num_workers")
        local_role = (self.first_role + wid) % self.roles_per_rank
        role = self.rank * self.roles_per_rank + local_role
        pos = StreamPosition(**asdict(self.positions.get(role, StreamPosition())))
        return self._batches(role, self.world_size * self.roles_per_rank, pos)

    def _batches(self, role: int, n_roles: int, pos: StreamPosition) -> Iterator[dict]:
        images, captions, keys = [], [], []
        for item in self._samples(role, n_roles, pos):
            images.append(item[0]), captions.append(item[1]), keys.append(item[2])
            if len(images) == self.batch_size:
                yield {
                    "images": torch.stack(images),
                    "captions": captions,
                    "keys": keys,
                    "role": role,
                    "position": asdict(pos),
                }
                images, captions, keys = [], [], []

    def _samples(self, role: int, n_roles: int, pos: StreamPosition) -> Iterator[tuple]:
        while True:
            produced, resume_at = 0, pos.consumed
            stream, errors = self._epoch_stream(role, n_roles, pos.epoch)
            counted_errors = 0
            for index, sample in enumerate(stream):
                if index < resume_at:  # already seen by the run we resume, errors included
                    counted_errors = errors.count
                    continue
                pos.shard_errors += errors.count - counted_errors
                counted_errors = errors.count
                pos.consumed = index + 1
                out = self._prepare(sample, sample_seed(self.seed, pos.epoch, role, index))
                if out is None:
                    pos.skipped += 1
                    continue
                produced += 1
                yield out
            pos.shard_errors += errors.count - counted_errors
            if produced == 0 and resume_at == 0:
                raise RuntimeError(
                    f"no readable samples for data role {role} in {len(self.urls)} shard(s): skipped "
                    f"{pos.skipped}, shard errors {pos.shard_errors} (last: {errors.last or 'none'})"
                )
            pos.epoch, pos.consumed = pos.epoch + 1, 0

    def _epoch_stream(self, role: int, n_roles: int, epoch: int) -> tuple[Iterator[dict], ErrorCounter]:
        shards = list(self.urls)
        random.Random(sample_seed(self.seed, epoch)).shuffle(shards)
        errors = ErrorCounter()
        if len(shards) >= n_roles:
            raw = iter_raw_samples(shards[role::n_roles], errors)
        else:  # fewer shards than readers: every reader scans all, keeps every n-th sample
            raw = (s for i, s in enumerate(iter_raw_samples(shards, errors)) if i % n_roles == role)
        rng = random.Random(sample_seed(self.seed, epoch, role, 7))
        return shuffled(raw, max(1, self.shuffle_buffer), rng), errors

    def _prepare(self, sample: dict, seed: int) -> tuple | None:
        rng = random.Random(seed)
        caption = read_caption(sample, self.caption_mode, rng)
        image_key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
        if not caption or image_key is None:
            return None
        try:
            img = decode_image(sample[image_key], name=f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}")
        except ImageDecodeError:
            return None
        return self.transform(img), caption, sample_id(sample)
