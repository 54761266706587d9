import pytest
import torch
import torch.nn.functional as F

from latentspace.serve.models import load_served_model

import fakes


@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.99999), ("bf16", 0.99)])
def test_openvino_matches_the_torch_forward(served_dir, precision, min_cosine):
    pytest.importorskip("openvino")
    reference = load_served_model("ref", str(served_dir))
    fast = load_served_model("fast", str(served_dir), image_backend="openvino", image_precision=precision)
    assert fast.describe()["image_backend"] == f"openvino-{precision}"
    pixels = torch.stack([reference.model.preprocess_image(fakes.draw(c).convert("RGB")) for c in fakes.CONCEPTS])
    want = reference.image_forward(pixels)
    for batch in (pixels, pixels[:1], pixels[:5]):  # any batch size
        got = fast.image_forward(batch)
        assert got.shape == (len(batch), 384)
        assert F.cosine_similarity(got, want[: len(batch)]).min() >= min_cosine


def test_bf16_needs_openvino():
    from latentspace.serve.settings import ServeSettings

    with pytest.raises(ValueError, match="no torch backend at bf16"):
        ServeSettings(models=["x"], image_backend="torch", image_precision="bf16")
    with pytest.raises(ValueError, match="precision is measured too"):
        ServeSettings(models=["x"], image_precision="int8")
