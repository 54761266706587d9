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
