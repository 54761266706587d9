"""The server runs each model's forwards on the runtime layer's choice and says which and why."""

from __future__ import annotations

import httpx
import pytest
import torch
import torch.nn.functional as F

from latentspace.runtime import CANDIDATES, EXACT, RuntimeSettings
from latentspace.serve.models import load_served_model
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer


def test_the_server_says_which_runtime_runs_and_why(served_dir):
    with LiveServer(ServeSettings(models=[f"tiny={served_dir}"], decode_threads=1)) as server:
        server.wait_ready()
        entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert tuple(entry["image_runtime"].split("-")) in CANDIDATES
    assert "fastest of" in entry["image_runtime_reason"] and "cosine >= 0.999" in entry["image_runtime_reason"]
    assert entry["image_batch"] in (4, 8, 16, 32)
    pinned = ServeSettings(
        models=[f"tiny={served_dir}"], image_runtime="torch", image_precision="fp32", decode_threads=1
    )
    with LiveServer(pinned) as server:
        server.wait_ready()
        entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert entry["image_runtime"] == "torch-fp32" and entry["image_runtime_reason"] == "asked for"


@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.99999), ("bf16", 0.99)])
def test_openvino_matches_the_torch_forward(served_dir, precision, min_cosine):
    pytest.importorskip("openvino")
    reference = load_served_model("ref", str(served_dir), image=EXACT)
    fast = load_served_model("fast", str(served_dir), image=RuntimeSettings(runtime="openvino", precision=precision))
    assert fast.describe()["image_runtime"] == f"openvino-{precision}"
    pixels = torch.stack([reference.model.preprocess_image(fakes.draw(c).convert("RGB")) for c in fakes.CONCEPTS])
    want = reference.model.image_rows(pixels)
    for batch in (pixels, pixels[:1], pixels[:5]):  # any batch size
        got = fast.model.image_rows(batch)
        assert got.shape == (len(batch), 384)
        assert F.cosine_similarity(got, want[: len(batch)]).min() >= min_cosine


def test_runtimes_and_precisions_that_do_not_go_together_are_refused():
    from latentspace.serve.settings import ServeSettings

    with pytest.raises(ValueError, match="no torch runtime at bf16"):
        ServeSettings(models=["x"], image_runtime="torch", image_precision="bf16")
    with pytest.raises(ValueError, match="no onnxruntime runtime at bf16"):
        ServeSettings(models=["x"], text_runtime="onnxruntime", text_precision="bf16")
    # auto with a precision: the fastest runtime at that precision (measured)
    assert ServeSettings(models=["x"], image_precision="int8").image.candidates() == [
        ("torch", "int8"),
        ("onnxruntime", "int8"),
    ]
