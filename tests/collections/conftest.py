"""Fixtures for the collection tests: the colour model (collection_fakes.ColourModel) and a
folder of drawings with every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
from collection_fakes import SETTINGS, ColourModel, save_drawing

from latentspace.collections import Collection, build_collection

import fakes


@pytest.fixture
def colour_model() -> ColourModel:
    return ColourModel()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """12 good drawings (4 colours x 3 shapes; some in a subfolder, some JPEG) and 5 bad files:
    a corrupt PNG, a zero-byte .jpg, a text file named .png, an image over a 10,000-pixel cap
    (bad.../huge.png, 128x128), and a dangling symlink. Plus a non-image file that is ignored."""
    root = tmp_path / "library"
    for i, concept in enumerate(fakes.CONCEPTS):
        folder = root / ("sub" if i % 3 == 2 else "")
        fmt = "JPEG" if i % 4 == 1 else "PNG"
        save_drawing(folder / f"{concept.replace(' ', '_')}.{'jpg' if fmt == 'JPEG' else 'png'}", concept, fmt=fmt)
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(fakes.png_bytes(fakes.draw("red circle"))[:60])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("these are notes, not a picture\n")
    save_drawing(bad / "huge.png", "blue circle", size=128)
    (bad / "gone.png").symlink_to(bad / "missing-target.png")
    (root / "readme.txt").write_text("not an image extension: ignored\n")
    return root


@pytest.fixture
def built(tmp_path: Path, library: Path, colour_model: ColourModel) -> Collection:
    """The library built into a collection with the colour model, opened."""
    build_collection(tmp_path / "c", colour_model, library, settings=SETTINGS)
    return Collection.open(tmp_path / "c")
