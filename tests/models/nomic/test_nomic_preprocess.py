"""Nomic image preprocessing vs transformers' CLIP image processors (T10), and the alpha policy.

transformers 5 ships two CLIP processors: `CLIPImageProcessor` is now a torchvision ("fast")
backend whose bicubic resampling differs from PIL's, and `CLIPImageProcessorPil` keeps the PIL
pipeline the published preprocessor_config.json was made with. Ours must equal the PIL one exactly;
the torchvision one is only measured, with a loose bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentspace.data.images import to_rgb
from latentspace.models.nomic.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    NomicImagePreprocessor,
    published_preprocessor_config,
)

from fakes_nomic_vision import write_tiny_nomic_vision_dir

SIZES = [(300, 200), (64, 480), (224, 224), (17, 31), (1000, 999), (225, 224)]  # (width, height)

CLIP_KW = dict(
    do_resize=True,
    size={"height": 224, "width": 224},
    resample=3,
    do_center_crop=True,
    crop_size=224,
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=list(CLIP_MEAN),
    image_std=list(CLIP_STD),
    do_convert_rgb=True,
)


def _random_image(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 7919 + h)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)


def _clip(processor, image: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.asarray(processor(image, return_tensors="pt")["pixel_values"][0]))


def _pil_processor(**overrides):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:  # transformers 4.x: the plain class is the PIL one
        cls = transformers.CLIPImageProcessor
    return cls(**{**CLIP_KW, **overrides})


def test_squash_matches_clip_pil_processor_exactly():
    """T10: squash to 224x224 (published config) == transformers' PIL CLIP processor, bit for bit."""
    ours, ref = NomicImagePreprocessor(), _pil_processor()
    for w, h in SIZES:
        image = _random_image(w, h)
        got, want = ours(image), _clip(ref, image)
        assert got.shape == (3, 224, 224) and got.dtype == torch.float32
        assert torch.equal(got, want), (w, h, (got - want).abs().max().item())


def test_squash_vs_torchvision_clip_processor_is_only_close():
    """transformers 5's default CLIPImageProcessor resamples with torchvision, not PIL: it differs
    (measured up to ~0.19 in normalised units on noise images), which is why ours follows PIL."""
    transformers = pytest.importorskip("transformers")
    fast = transformers.CLIPImageProcessor(**CLIP_KW)
    ours = NomicImagePreprocessor()
    worst = 0.0
    for w, h in SIZES:
        image = _random_image(w, h)
        worst = max(worst, (ours(image) - _clip(fast, image)).abs().max().item())
    print(f"vs {type(fast).__name__}: max|delta| = {worst:.3g}")
    assert worst < 0.5  # same pipeline, different bicubic kernel implementation


def test_shortest_edge_and_centre_crop_match_clip_pil_processor():
    ours = NomicImagePreprocessor(size=None, shortest_edge=224, crop_size=(224, 224))
    ref = _pil_processor(size={"shortest_edge": 224})
    squash = NomicImagePreprocessor()
    for w, h in SIZES:
        image = _random_image(w, h)
        got = ours(image)
        assert torch.equal(got, _clip(ref, image)), (w, h)
        if abs(w - h) > 0.1 * min(w, h):  # the two policies really differ on non-square images
            assert (got - squash(image)).abs().max().item() > 1.0


def test_grayscale_matches_clip_pil_processor():
    image = _random_image(50, 70, "L")
    assert torch.equal(NomicImagePreprocessor()(image), _clip(_pil_processor(), image))


def test_transparency_is_composited_on_white():
    """A fully transparent image becomes white, not black (its RGB under the alpha is black here)."""
    pre = NomicImagePreprocessor()
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    white = ((1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(3, 1, 1).expand(3, 224, 224)
    torch.testing.assert_close(pre(clear), white, rtol=0, atol=1e-6)
    # partial transparency: the same as the project's to_rgb, then the RGB pipeline
    image = _random_image(70, 50, "RGBA")
    assert torch.equal(pre(image), pre(to_rgb(image)))
    black_drop = pre(image.convert("RGB"))  # the old CLIP behaviour (alpha dropped)
    assert (pre(image) - black_drop).abs().max().item() > 1.0


def test_transparency_matches_transformers_5_pil_processor():
    """transformers 5's convert_to_rgb also composites onto white: then the results agree exactly."""
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4 drops the alpha channel instead")
    image = _random_image(70, 50, "RGBA")
    assert torch.equal(NomicImagePreprocessor()(image), _clip(_pil_processor(), image))


def test_from_dir_reads_preprocessor_config_or_uses_defaults(tmp_path: Path):
    assert NomicImagePreprocessor.from_dir(tmp_path) == NomicImagePreprocessor()  # no file: defaults
    pre = NomicImagePreprocessor.from_dir(write_tiny_nomic_vision_dir(tmp_path / "m", img_size=32))
    assert pre.image_size == (32, 32) and pre.size == (32, 32) and pre.crop_size is None
    assert pre.mean == CLIP_MEAN and pre.std == CLIP_STD
    assert pre(_random_image(90, 20)).shape == (3, 32, 32)
    assert NomicImagePreprocessor.from_dict(published_preprocessor_config()) == NomicImagePreprocessor()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        NomicImagePreprocessor.from_dir(tmp_path / "bad")


def test_from_dict_spellings_and_refusals():
    old = NomicImagePreprocessor.from_dict({"size": 224, "crop_size": 224})  # CLIP's original spelling
    assert old.shortest_edge == 224 and old.crop_size == (224, 224) and old.image_size == (224, 224)
    new = NomicImagePreprocessor.from_dict({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}})
    assert new.shortest_edge == 256 and new.image_size == (224, 224)
    with pytest.raises(ValueError, match="do_resize"):
        NomicImagePreprocessor.from_dict({"do_resize": False})
    with pytest.raises(ValueError, match="crop_size"):
        NomicImagePreprocessor.from_dict({"size": {"shortest_edge": 224}, "do_center_crop": False})
    with pytest.raises(ValueError, match="image_mean"):
        NomicImagePreprocessor.from_dict({"image_mean": [0.5, 0.5]})


def test_batch_stacks():
    pre = NomicImagePreprocessor(size=(32, 48))
    x = pre.batch([_random_image(10, 10), _random_image(64, 20, "RGBA")])
    assert x.shape == (2, 3, 32, 48) and x.dtype == torch.float32
    assert json.loads(json.dumps(published_preprocessor_config(32, 48)))["size"] == {"height": 32, "width": 48}
