"""Decode a task's images in DataLoader worker processes, in exactly the in-process order.

Evaluation embeds images in the main process (the model lives there) while workers read the shards
and decode images. Results must not depend on the number of workers, so the split is fixed by the
task alone:

- the task's samples are numbered in reading order, usable or not, and cut into chunks of
  `chunk_size` positions; worker w of n decodes the chunks c with c % n == w, and yields one item
  per chunk, even when every sample in it was skipped;
- every worker reads all shards but decodes only its own chunks: reading tar members is cheap next
  to decoding images, and it needs no index of the shards;
- the main process puts chunks back in order with a small reorder buffer, so every sample is seen
  exactly once and in the order of a single-process pass;
- each chunk carries the SampleStats of its own samples (counts made in a worker process would
  otherwise be lost with it), which the caller adds up.

`workers=0` runs the same code in the calling process, so both paths are one path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from latentspace.data.workers import available_cpus
from latentspace.eval.tasks import (
    SampleStats,
    is_image_folder,
    raw_task_samples,
    read_classnames,
    sample_reader,
    shard_paths,
)
from latentspace.process_state import kept_signal_handlers

# How many chunks each worker decodes ahead of the model.
_PREFETCH_CHUNKS = 2


def default_workers() -> int:
    """Two CPUs stay with the main process, up to 4 decode: none on a machine of 2 CPUs or fewer.

    The forward pass already runs on every core (torch's intra-op threads), and the main process
    also unpickles what workers send, so a worker only pays off with cores to spare (measured:
    docs/benchmarks.md, "Decoding workers").
    """
    return max(0, min(4, available_cpus() - 2))


@dataclass
class DecodedChunk:
    """The usable samples among one chunk's positions, and what decoding them skipped."""

    number: int
    images: list[Image.Image] = field(default_factory=list)
    targets: list = field(default_factory=list)
    stats: SampleStats = field(default_factory=SampleStats)


class TaskChunks(IterableDataset):
    """The chunks of one task that the current worker owns (all of them outside a DataLoader worker).

    Holds only paths and numbers, so it pickles cheaply under any multiprocessing start method.
    """

    def __init__(self, task_dir: Path, task_type: str, chunk_size: int, group_by: int | None = None):
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.task_dir, self.task_type, self.chunk_size = Path(task_dir), task_type, chunk_size
        self.group_by = group_by

    def __iter__(self) -> Iterator[DecodedChunk]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        read = sample_reader(self.task_dir, self.task_type, self.group_by)

        def mine(position: int) -> bool:
            return (position // self.chunk_size) % n_workers == worker

        chunk = None
        for position, sample in raw_task_samples(self.task_dir, self.task_type, keep=mine):
            number = position // self.chunk_size
            if chunk is None or chunk.number != number:
                if chunk is not None:
                    yield chunk
                chunk = DecodedChunk(number)
            image, target, reason = read(sample)
            if reason is not None:
                chunk.stats.skip(reason, sample["__key__"])
                continue
            chunk.stats.n_yielded += 1
            chunk.images.append(image)
            chunk.targets.append(target)
        if chunk is not None:
            yield chunk


def decoded_chunks(
    task_dir: Path, task_type: str, *, chunk_size: int, workers: int, group_by: int | None = None
) -> Iterator[DecodedChunk]:
    """Every chunk of the task, decoded by `workers` processes (0 = here), yielded in order.
    With `group_by`, targets are (class index, group) pairs (see tasks.sample_reader)."""
    if workers < 0:
        raise ValueError("workers must be 0 (decode in this process) or more")
    _check_readable(Path(task_dir), task_type, group_by)
    dataset = TaskChunks(task_dir, task_type, chunk_size, group_by)
    if workers == 0:
        yield from dataset
        return
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=_PREFETCH_CHUNKS
    )
    # DataLoader already serves workers' items round-robin, which is chunk order; the buffer makes
    # the order a property of this function rather than of DataLoader's scheduling.
    pending: dict[int, DecodedChunk] = {}
    expected = 0
    with kept_signal_handlers():  # the workers' SIGCHLD handler goes when they do
        for chunk in loader:
            pending[chunk.number] = chunk
            while expected in pending:
                yield pending.pop(expected)
                expected += 1
    if pending:
        raise RuntimeError(f"{task_dir}: chunks {sorted(pending)} arrived without chunk {expected}; a worker lost data")


def _check_readable(task_dir: Path, task_type: str, group_by: int | None) -> None:
    """Fail here, in the main process, on a missing shard or class-name file: an error raised inside
    a worker reaches the user wrapped in a worker traceback."""
    if is_image_folder(task_dir):
        read_classnames(task_dir)
    else:
        shard_paths(task_dir)
    sample_reader(task_dir, task_type, group_by)


def _as_is(chunk: DecodedChunk) -> DecodedChunk:
    """DataLoader's collate step, which would otherwise try to turn images into tensors."""
    return chunk
