import pytest
import torch

from latentspace.config import AugmentConfig
from latentspace.data.images import to_rgb
from latentspace.data.transforms import BatchAugment, Preprocess, eval_transform, load_transform

import fakes

NO_AUG = AugmentConfig(scale_min=1.0, hflip=0.0, color_jitter=0.0, hue=0.0, grayscale=0.0, rotation=0.0)


def _batch():
    return torch.stack([load_transform(Preprocess(16))(to_rgb(fakes.draw(c))) for c in fakes.CONCEPTS[:6]])


def test_same_generator_same_augmentation():
    aug = BatchAugment(Preprocess(16), AugmentConfig())
    a = aug(_batch(), torch.Generator().manual_seed(3))
    b = aug(_batch(), torch.Generator().manual_seed(3))
    c = aug(_batch(), torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_without_augmentation_training_input_matches_inference_input():
    train_view = BatchAugment(Preprocess(16), NO_AUG)(_batch(), torch.Generator().manual_seed(0))
    infer = torch.stack([eval_transform(Preprocess(16))(to_rgb(fakes.draw(c))) for c in fakes.CONCEPTS[:6]])
    assert (train_view - infer).abs().mean() < 0.05


def _square_on_white(n: int = 8, size: int = 32) -> torch.Tensor:
    """uint8 batch: a red square filling the middle half of a white frame."""
    x = torch.full((n, 3, size, size), 255, dtype=torch.uint8)
    q = size // 4
    x[:, 1:, q : size - q, q : size - q] = 0
    return x


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5


def test_zoom_out_shrinks_about_half_the_images_into_a_white_margin():
    black = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    out = _unnormalise(BatchAugment(Preprocess(16), NO_AUG.model_copy(update={"zoom_out": 2.0}))(black, _gen()))
    border = torch.cat([out[:, :, 0], out[:, :, -1], out[:, :, :, 0], out[:, :, :, -1]], -1).mean((1, 2))
    shrunk = border > 0.5  # a crop of an all-black image is black to its edge; a shrunk one has white round it
    assert 16 <= int(shrunk.sum()) <= 48
    # Without zoom_out every view stays black to the border.
    plain = _unnormalise(BatchAugment(Preprocess(16), NO_AUG)(black, _gen()))
    assert plain.max() < 0.05


def test_outline_darkens_the_edges_and_keeps_the_fill():
    out = _unnormalise(
        BatchAugment(Preprocess(16), NO_AUG.model_copy(update={"outline": 1.0}))(_square_on_white(), _gen())
    )
    red, edge_ring, white = out[:, :, 8, 8], out[:, :, 4, 4:12], out[:, :, 1, 1]
    assert torch.allclose(red, torch.tensor([1.0, 0.0, 0.0]).expand_as(red), atol=0.05)
    assert (white > 0.95).all()
    assert edge_ring.amax((1, 2)).lt(0.7).all()  # the square's top edge is drawn dark in every channel


def test_line_art_keeps_only_dark_edges_on_white():
    out = _unnormalise(
        BatchAugment(Preprocess(16), NO_AUG.model_copy(update={"line_art": 1.0}))(_square_on_white(), _gen())
    )
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])  # no colour left
    assert (out[:, :, 8, 8] > 0.95).all()  # the red fill is gone
    assert out[:, :, 4, 4:12].amax((1, 2)).lt(0.7).all()


def test_outline_and_line_art_split_one_probability():
    with pytest.raises(ValueError, match="at most 1"):
        AugmentConfig(outline=0.7, line_art=0.5)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
