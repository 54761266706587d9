"""runtime.forwards: a model on its runtimes gives vectors within the bound, says what runs it,
and falls back to PyTorch when a runtime cannot build or fails on an input."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from latentspace.models.embedder import Embedder
from latentspace.models.load import load
from latentspace.runtime import EXACT, Choice, ModelOnRuntimes, RuntimeSettings, on_runtimes, probe_images
from latentspace.runtime.forwards import guarded
from latentspace.space import SpaceIdentity

import fakes


@pytest.fixture(scope="module")
def tiny(served_dir):
    return load(str(served_dir))


def test_auto_images_stay_within_the_bound_and_text_stays_exact(tiny, tmp_path):
    model = on_runtimes(tiny, cache_dir=tmp_path)  # images auto, texts PyTorch fp32 (the defaults)
    assert isinstance(model, ModelOnRuntimes) and model.runtime_names()["text"] == "torch-fp32"
    images = [fakes.draw(c) for c in fakes.CONCEPTS]
    got, want = model.embed_images(images), tiny.embed_images(images)
    assert F.cosine_similarity(got, want).min() >= 0.999
    assert model.image_batch_size == model.choices["image"].batch  # the images per forward it measured
    texts = ["a red circle", "two blue squares"]
    assert torch.equal(model.embed_texts(texts), tiny.embed_texts(texts))
    described = model.describe()
    assert described["image_runtime"] == model.runtime_names()["image"] and described["text_runtime"] == "torch-fp32"


def test_pinned_pytorch_fp32_is_the_model_bit_for_bit(tiny):
    model = on_runtimes(tiny, image=EXACT, text=EXACT)
    images = [fakes.draw(c) for c in fakes.CONCEPTS[:3]]
    assert torch.equal(model.embed_images(images), tiny.embed_images(images))
    assert model.choices["image"].reason == "asked for"


def test_a_text_runtime_other_than_pytorch_stays_within_the_bound(tiny):
    model = on_runtimes(tiny, image=EXACT, text=RuntimeSettings(runtime="onnxruntime", precision="fp32"))
    texts = ["a red circle", "two blue squares on a long white table", ""]
    assert model.runtime_names()["text"] == "onnxruntime-fp32"
    assert F.cosine_similarity(model.embed_texts(texts), tiny.embed_texts(texts)).min() >= 0.99999


def test_a_runtime_that_fails_falls_back_to_pytorch(tiny, caplog, monkeypatch):
    """A runtime that cannot build, or breaks on an input calibration did not show, costs speed,
    not answers: PyTorch runs from then on, and the choice says so."""

    def broken(items):
        raise RuntimeError("a graph that baked in one input shape")

    choice = Choice("onnxruntime", "fp32", "measured")
    run = guarded(broken, lambda items: items * 2, choice, "m image")
    with caplog.at_level(logging.ERROR):
        assert run(torch.ones(2)).tolist() == [2.0, 2.0]
    assert choice.name == "torch-fp32" and "fell back" in choice.reason and "running PyTorch fp32" in caplog.text

    def cannot_build(*args):
        raise RuntimeError("the runtime refuses this graph (simulated)")

    monkeypatch.setattr("latentspace.runtime.forwards.build_forward", cannot_build)
    model = on_runtimes(tiny, image=RuntimeSettings(runtime="openvino", precision="fp32"), text=EXACT)
    assert model.runtime_names()["image"] == "torch-fp32"
    assert "openvino-fp32 could not be built" in model.choices["image"].reason
    pixels = probe_images(tiny.preprocess_image, n=2)
    assert torch.equal(model.image_rows(pixels), tiny.image_rows(pixels))


class _Opaque(Embedder):
    """An image model whose forward is not one module (nothing to export)."""

    kind, name, modalities = "opaque", "opaque", ("image",)

    def __init__(self):
        self.identity = SpaceIdentity("opaque-space", "0" * 16, 3)

    def preprocess_image(self, image):
        return torch.zeros(3, 4, 4)

    def image_rows(self, pixels):
        return torch.ones(len(pixels), 3)


def test_a_model_without_an_exportable_forward_runs_its_own(tmp_path):
    model = on_runtimes(_Opaque(), cache_dir=tmp_path)
    assert model.runtime_names() == {"image": "torch-fp32"}
    assert "the only runtime for this image forward" in model.choices["image"].reason
    assert model.embed_images([fakes.draw("red circle")]).shape == (1, 3)


def test_a_runtime_asked_for_by_name_is_still_held_to_the_bound(tiny, monkeypatch):
    """Pinning a runtime skips the race, not the check: a graph that answers wrongly (here: noise)
    is refused before it serves a vector."""
    from latentspace.runtime import forwards

    real = forwards.build_forward

    def noisy(module, example, runtime, precision):
        if runtime == "torch":
            return real(module, example, runtime, precision)
        return lambda *inputs: torch.randn(len(inputs[0]), 384)

    monkeypatch.setattr(forwards, "build_forward", noisy)
    model = on_runtimes(tiny, image=RuntimeSettings(runtime="onnxruntime", precision="fp32"), text=EXACT)
    assert model.runtime_names()["image"] == "torch-fp32"
    assert "strays from PyTorch fp32" in model.choices["image"].reason
