"""Fixtures for the eval tests: tasks written in the real on-disk format, and a fake model.

The fake model sees colour, nothing else: an image embeds as its mean RGB, a text as the RGB of
the first colour it names. So on solid-colour images its accuracy is known by construction.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
NOISE_DIMS = 5  # extra dimensions of small noise, so embeddings are not trivially 3-d


class ColourEmbedder:
    """An ImageTextEmbedder that records how it was called."""

    name = "fake-colour"
    space = "fake-colour-space@0000"

    def __init__(self) -> None:
        self.image_batch_sizes: list[int] = []
        self.text_calls: list[tuple[list[str], str]] = []
        self._noise = torch.Generator().manual_seed(0)

    def embed_images(self, images):
        self.image_batch_sizes.append(len(images))
        rgb = [np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0) for image in images]
        return self._finish(torch.tensor(np.stack(rgb)) / 255)

    def embed_texts(self, texts, task_type="search_query"):
        self.text_calls.append((list(texts), task_type))
        return self._finish(torch.tensor([_named_colour(text) for text in texts], dtype=torch.float32))

    def runtime_names(self):
        return {"image": "torch-fp32", "text": "torch-fp32"}

    def _finish(self, rgb: torch.Tensor) -> torch.Tensor:
        noise = 0.01 * torch.randn(len(rgb), NOISE_DIMS, generator=self._noise)
        return F.normalize(torch.cat([rgb, noise], dim=1), dim=-1)


def _named_colour(text: str) -> tuple[float, float, float]:
    for word in text.lower().replace(".", " ").split():
        if word in COLOURS:
            return tuple(c / 255 for c in COLOURS[word])
    return (0.0, 0.0, 0.0)


def image_bytes(colour: str, fmt: str = "PNG", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, format=fmt)
    return buffer.getvalue()


def write_task(
    root: Path,
    name: str,
    samples: list[dict],
    *,
    classnames: list[str] | None = None,
    templates: list[str] | None = None,
    dataset_type: str | None = None,
    nshards: int = 1,
) -> Path:
    """Write a task directory exactly as CLIP_benchmark / DataComp lay it out."""
    task = root / name
    (task / "test").mkdir(parents=True)
    if classnames is not None:
        (task / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates is not None:
        (task / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    if dataset_type is not None:
        (task / "dataset_type.txt").write_text(dataset_type + "\n")
    (task / "test" / "nshards.txt").write_text(f"{nshards}\n")
    for shard in range(nshards):
        with wds.TarWriter(str(task / "test" / f"{shard}.tar")) as sink:
            for i, sample in enumerate(samples[shard::nshards]):
                sink.write({"__key__": f"s{shard}_{i:04d}", **sample})
    return task


CLASSNAMES = ["red", "green", "blue", "yellow"]
# 8 images; the last two carry the wrong label, so the fake model scores acc1 = 6/8 exactly.
CLASSIFICATION_SAMPLES = [
    {"png": image_bytes("red"), "cls": 0},
    {"png": image_bytes("green"), "cls": 1},
    {"jpg": image_bytes("blue", "JPEG"), "cls": 2},
    {"webp": image_bytes("yellow", "WEBP"), "cls": 3},
    {"png": image_bytes("red"), "cls": 0},
    {"png": image_bytes("green"), "cls": 1},
    {"png": image_bytes("blue"), "cls": 0},
    {"png": image_bytes("yellow"), "cls": 1},
]
# Two captions per image; the yellow image's captions wrongly say cyan.
RETRIEVAL_SAMPLES = [
    {"png": image_bytes("red"), "txt": "a red square\nred"},
    {"png": image_bytes("green"), "txt": "a green square\ngreen"},
    {"png": image_bytes("blue"), "txt": "a blue tile\nblue"},
    {"png": image_bytes("yellow"), "txt": "a cyan thing\ncyan"},
]


@pytest.fixture
def model() -> ColourEmbedder:
    return ColourEmbedder()


@pytest.fixture
def make_model():
    """A factory of fresh fake models (each with its own noise stream), for tests that need two.
    Test modules take it as a fixture: importing `conftest` by name finds whichever conftest
    module pytest imported first."""
    return ColourEmbedder


@pytest.fixture
def classification_task(tmp_path: Path) -> Path:
    return write_task(
        tmp_path,
        "colours",
        CLASSIFICATION_SAMPLES,
        classnames=CLASSNAMES,
        templates=["a photo of {c}.", "{c} art"],
        nshards=2,
    )


@pytest.fixture
def retrieval_task(tmp_path: Path) -> Path:
    return write_task(tmp_path, "captions", RETRIEVAL_SAMPLES, dataset_type="retrieval")


@pytest.fixture
def make_task(tmp_path: Path):
    """write_task into this test's tmp_path."""
    return lambda name, samples, **kwargs: write_task(tmp_path, name, samples, **kwargs)


@pytest.fixture
def encode_image():
    return image_bytes
