import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from latentspace.data.images import ImageDecodeError, decode_image, load_image, to_rgb
from latentspace.data.shards import ImageTextStream, StreamPosition, expand_urls, iter_captions
from latentspace.data.transforms import Preprocess, load_transform
from latentspace.process_state import kept_signal_handlers

import fakes


def _stream(paths, **kw):
    args = dict(urls=[str(p) for p in paths], transform=load_transform(Preprocess(16)), batch_size=5, shuffle_buffer=7)
    return ImageTextStream(**(args | kw))


def test_batches_hold_images_and_captions(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=2, per_shard=10)
    batch = next(iter(_stream(paths, caption_mode="name")))
    assert batch["images"].shape == (5, 3, 32, 32) and batch["images"].dtype == torch.uint8
    assert all(c in fakes.CONCEPTS for c in batch["captions"])


def test_corrupt_and_captionless_samples_are_skipped_and_counted(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=1, per_shard=12, corrupt=2, empty_caption=1)
    it = iter(_stream(paths, batch_size=3, caption_mode="name", shuffle_buffer=1))
    batches = [next(it) for _ in range(3)]  # 9 good samples = one epoch
    assert [b["position"]["skipped"] for b in batches] == [3, 3, 3]  # the bad ones come first
    assert next(it)["position"] == {"epoch": 1, "consumed": 6, "skipped": 6, "shard_errors": 0}
    assert sum(len(b["captions"]) for b in batches) == 9


def test_truncated_shard_is_counted_not_fatal(tmp_path):
    good = fakes.write_shards(tmp_path / "a", n_shards=1, per_shard=10)
    bad = fakes.write_shards(tmp_path / "b", n_shards=1, per_shard=10)[0]
    bad.write_bytes(bad.read_bytes()[:3000])  # cut mid-member
    it = iter(_stream(good + [bad], batch_size=4, caption_mode="name"))
    batches = [next(it) for _ in range(4)]
    assert sum(b["position"]["shard_errors"] for b in batches[-1:]) >= 1


def test_nothing_readable_is_an_error(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=1, per_shard=4, corrupt=4)
    with pytest.raises(RuntimeError, match="no readable samples"):
        next(iter(_stream(paths)))


def test_missing_shards_fail_up_front(tmp_path):
    fakes.write_shards(tmp_path, n_shards=2, per_shard=2)
    assert len(expand_urls(str(tmp_path / "shard-{000000..000001}.tar"))) == 2
    with pytest.raises(FileNotFoundError, match="shard-000002"):
        expand_urls(str(tmp_path / "shard-{000000..000002}.tar"))


def test_iter_captions_reads_every_caption_variant(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=1, per_shard=3)
    assert set(iter_captions([str(p) for p in paths], "random")) == {
        c for concept in fakes.CONCEPTS[:3] for c in (concept, f"a {concept}")
    }


def _flat(batches):
    return [(k, c) for b in batches for k, c in zip(b["keys"], b["captions"])]


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_from_positions_replays_the_same_stream(tmp_path, workers):
    paths = fakes.write_shards(tmp_path, n_shards=3, per_shard=11, corrupt=1)
    paths[2].write_bytes(paths[2].read_bytes()[:9000])  # a truncated shard: its errors must not be counted twice
    make = lambda **kw: DataLoader(_stream(paths, num_workers=workers, **kw), batch_size=None, num_workers=workers)
    with kept_signal_handlers():  # the workers' SIGCHLD handler ends with them
        full = list(itertools.islice(make(), 14))  # crosses several epochs
        positions, next_role = {}, 0
        for b in full[:5]:
            positions[b["role"]] = StreamPosition(**b["position"])
            next_role = (b["role"] + 1) % max(1, workers)
        resumed = list(itertools.islice(make(positions=positions, first_role=next_role), 9))
    assert _flat(resumed) == _flat(full[5:])
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(resumed, full[5:]))
    assert [b["position"] for b in resumed] == [b["position"] for b in full[5:]]  # counts too


def test_decode_errors_are_clear():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", name="x.png")
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_image(b"hello, I am text", name="x.png")
    png = fakes.png_bytes(fakes.draw("red circle"))
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_image(png[: len(png) // 2], name="half.png")
    with pytest.raises(ImageDecodeError, match="exceeds"):
        decode_image(png, max_pixels=100)


def test_transparency_becomes_white_not_black():
    img = to_rgb(fakes.draw("red circle"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((32, 32)) == fakes.COLOURS["red"]
    assert load_image(fakes.draw("red circle").convert("LA")).getpixel((0, 0)) == (255, 255, 255)


def test_pipe_urls_stream_through_a_command(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=1, per_shard=6)
    urls = expand_urls(f"pipe:cat {paths[0]}")
    batch = next(iter(_stream(urls, caption_mode="name")))
    assert len(batch["captions"]) == 5


def test_resume_at_any_batch_keeps_error_counts_exact(tmp_path):
    paths = fakes.write_shards(tmp_path, n_shards=2, per_shard=9, corrupt=2)
    paths[0].write_bytes(paths[0].read_bytes()[:9000])  # truncated: raises mid-epoch when read
    full = list(itertools.islice(iter(_stream(paths, shuffle_buffer=1)), 12))
    assert full[-1]["position"]["shard_errors"] >= 2  # at least one per epoch, several epochs
    for k in range(1, 9):
        resumed = iter(_stream(paths, shuffle_buffer=1, positions={0: StreamPosition(**full[k - 1]["position"])}))
        assert [next(resumed)["position"] for _ in range(3)] == [b["position"] for b in full[k : k + 3]], k


def test_captions_listed_for_the_cache_are_the_ones_training_draws(tmp_path):
    """A json with an empty captions list falls back to txt in both places (else the cache misses)."""
    import json

    import webdataset as wds

    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path)) as w:
        w.write(
            {
                "__key__": "0",
                "png": fakes.png_bytes(fakes.draw("red circle")),
                "txt": "red circle",
                "json": json.dumps({"captions": []}).encode(),
            }
        )
    assert list(iter_captions([str(path)], "random")) == ["red circle"]
    assert next(iter(_stream([path], batch_size=1, caption_mode="random")))["captions"] == ["red circle"]
