"""Decoding in DataLoader workers: same samples, same order, same counts, same results as in-process."""

from __future__ import annotations

import pytest

from latentspace.eval.loader import decoded_chunks, default_workers
from latentspace.eval.runner import evaluate_task
from latentspace.eval.tasks import CLASSIFICATION, RETRIEVAL, SampleStats, TaskSpec, iter_task_samples

COLOURS = ["red", "green", "blue", "yellow"]
# Samples whose image does not decode. Shard s holds samples s, s + 3, s + 6, ..., so in reading
# order samples 12 and 15 sit at positions 4 and 5 (one chunk of 2), and 13 at position 13.
CORRUPT = {12, 13, 15}


@pytest.fixture
def numbered_task(make_task, encode_image):
    """25 retrieval samples over 3 shards, each captioned with its own number, 3 of them corrupt."""
    samples = [
        {"png": b"\x89PNG not really" if i in CORRUPT else encode_image(COLOURS[i % 4]), "txt": f"{COLOURS[i % 4]} {i}"}
        for i in range(25)
    ]
    return make_task("numbered", samples, dataset_type="retrieval", nshards=3)


def _captions(chunks) -> list[str]:
    return [caption for chunk in chunks for captions in chunk.targets for caption in captions]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine's CPUs
@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_every_sample_once_in_the_in_process_order(numbered_task, workers):
    reference = [captions[0] for _, captions, _ in iter_task_samples(numbered_task)]
    assert len(reference) == 22
    chunks = list(decoded_chunks(numbered_task, RETRIEVAL, chunk_size=4, workers=workers))
    assert [chunk.number for chunk in chunks] == list(range(7))  # ceil(25 / 4), empty or not
    assert _captions(chunks) == reference
    stats = SampleStats()
    for chunk in chunks:
        stats.add(chunk.stats)
    assert stats.n_yielded == 22 and stats.skipped == {"undecodable image": 3}  # counted in the workers


def test_a_chunk_whose_samples_were_all_skipped_still_arrives(numbered_task):
    # With chunks of 2, positions 4 and 5 form chunk 2, which has no usable sample.
    chunks = list(decoded_chunks(numbered_task, RETRIEVAL, chunk_size=2, workers=2))
    assert chunks[2].images == [] and chunks[2].stats.skipped == {"undecodable image": 2}
    assert [chunk.number for chunk in chunks] == list(range(13))


@pytest.mark.parametrize("kind", ["classification", "retrieval"])
def test_results_are_identical_with_0_and_2_workers(kind, classification_task, numbered_task, make_model):
    task, spec = {
        "classification": (classification_task, TaskSpec("colours", CLASSIFICATION, "acc1")),
        "retrieval": (numbered_task, TaskSpec("numbered", RETRIEVAL, "mean_recall@1")),
    }[kind]
    runs = []
    for workers in (0, 2):
        model = make_model()
        result = evaluate_task(model, task, spec, batch_size=3, progress=False, workers=workers)
        runs.append((result, model.image_batch_sizes))
    (in_process, batches0), (in_workers, batches2) = runs
    assert in_workers.metrics == in_process.metrics and in_workers.chance == in_process.chance
    assert (in_workers.n_samples, in_workers.n_skipped, in_workers.skipped_reasons) == (
        in_process.n_samples,
        in_process.n_skipped,
        in_process.skipped_reasons,
    )
    assert batches2 == batches0  # the model saw the very same batches


def test_image_folder_tasks_split_across_workers(tmp_path, encode_image):
    task = tmp_path / "folders"
    for label, colour in enumerate(COLOURS[:2]):
        (task / "test" / f"{label}_{colour}").mkdir(parents=True)
        for i in range(5):
            (task / "test" / f"{label}_{colour}" / f"{i}.png").write_bytes(encode_image(colour))
    (task / "classnames.txt").write_text("red\ngreen\n")
    chunks = list(decoded_chunks(task, CLASSIFICATION, chunk_size=3, workers=2))
    assert [t for chunk in chunks for t in chunk.targets] == [0] * 5 + [1] * 5


def test_a_missing_shard_fails_in_the_main_process(numbered_task):
    (numbered_task / "test" / "1.tar").unlink()
    with pytest.raises(FileNotFoundError, match="missing shard"):
        next(decoded_chunks(numbered_task, RETRIEVAL, chunk_size=4, workers=2))


def test_default_workers_leave_a_cpu_for_the_model():
    assert 0 <= default_workers() <= 4
    with pytest.raises(ValueError, match="workers must be 0"):
        next(decoded_chunks("anywhere", RETRIEVAL, chunk_size=4, workers=-1))
