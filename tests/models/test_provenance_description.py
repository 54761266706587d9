"""What a model says about how it turns inputs into vectors (what a collection records as its
provenance): the text prefixes, and the image preprocessing read from the model's own transform,
checked against what that transform actually does."""

from __future__ import annotations

import torch
from PIL import Image

from latentspace.data.images import to_rgb
from latentspace.models.load import load
from latentspace.runtime import EXACT, on_runtimes

import fakes


def _normalised_white(description: dict) -> torch.Tensor:
    """A white pixel after the described normalisation."""
    mean, std = torch.tensor(description["mean"]), torch.tensor(description["std"])
    return (1.0 - mean) / std


def test_our_model_describes_its_own_transform(served_dir):
    model = load(str(served_dir))
    described = model.image_preprocessing()
    size = described["resize"]["size"]
    pixels = model.preprocess_image(Image.new("RGB", (37, 90), "white"))
    assert described["input_shape"] == list(pixels.shape) == [3, *size]
    assert described["resize"]["interpolation"] == "bicubic" and described["steps"][0] == "Resize"
    # mean/std are the ones the transform applies: a white image comes out as (1 - mean) / std
    assert torch.allclose(pixels[:, 0, 0], _normalised_white(described))
    assert described["transparency"] == "alpha composited onto RGB 255,255,255"
    # ...which is what every path does to a transparent image
    assert to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    # a model on runtimes says the same as the model itself
    assert on_runtimes(model, image=EXACT, text=EXACT).image_preprocessing() == described
    # all-MiniLM-L6-v2 has no prefixes: "" for every task type it takes
    assert model.text_prefix("search_query") == model.text_prefix("search_document") == ""


def test_nomic_models_describe_their_preprocessor_and_prefixes(nomic_models):
    model = load(
        str(nomic_models / "nomic-embed-vision-v1.5"), partners=[load(str(nomic_models / "nomic-embed-text-v1.5"))]
    )
    described = model.image_preprocessing()
    pixels = model.preprocess_image(Image.new("RGB", (50, 20), "white"))
    assert described["input_shape"] == list(pixels.shape)
    assert described["resize"]["size"] == list(pixels.shape[1:]) and described["resize"]["interpolation"] == "bicubic"
    assert torch.allclose(pixels[:, 0, 0], _normalised_white(described), atol=1e-6)
    assert model.text_prefix("search_query") == "search_query: "
    assert model.text_prefix("search_document") == "search_document: "


def test_a_clip_describes_its_image_processor(tmp_path):
    from latentspace.models.baselines import HFClipModel

    model = HFClipModel(fakes.make_hf_clip(tmp_path / "clip", seed=0))
    described = model.image_preprocessing()
    pixels = model.preprocess_image(Image.new("RGB", (64, 40), "white"))
    assert described["input_shape"] == list(pixels.shape)
    assert described["steps"] == ["CLIPImageProcessor"]
    assert torch.allclose(pixels[:, 0, 0], _normalised_white(described), atol=1e-5)
    assert model.text_prefix("search_query") == ""  # CLIP has no task prefixes
