import pytest
import torch

from latentspace import embed
from latentspace.models.paired import PairedModel
from latentspace.space import SpaceIdentity, SpaceMismatchError

import fakes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text_tower):
    return fakes.save_tiny_model_dir(tmp_path_factory.mktemp("m") / "model", text_tower)


def test_text_shape_usage_and_space(model_dir, text_tower):
    out = embed.text(["a red heart", "pizza"], model=str(model_dir), task_type="search_query")
    assert set(out) >= {"embeddings", "usage", "model"}
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 384
    assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] > 0
    assert out["space"] == str(text_tower.space)
    # the model directory's text side is exactly the text model's
    plain = embed.text(["a red heart", "pizza"], model="builtin:all-MiniLM-L6-v2", task_type="search_query")
    assert plain["embeddings"] == out["embeddings"]  # bit-identical, same batch
    short = embed.text(["pizza"], model=str(model_dir), dimensionality=64)
    assert len(short["embeddings"][0]) == 64


def test_images_as_paths_bytes_and_any_pil_mode(model_dir, tmp_path):
    rgba = fakes.draw("blue square")
    path = tmp_path / "sq.png"
    rgba.save(path)
    inputs = [str(path), path.read_bytes(), rgba, rgba.convert("L"), rgba.convert("P"), rgba.convert("RGB")]
    out = embed.image(inputs, model=model_dir)
    vecs = torch.tensor(out["embeddings"])
    assert vecs.shape == (6, 384)
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(vecs[0], vecs[1])  # a path and its bytes
    torch.testing.assert_close(vecs[0], vecs[2])  # and the PIL image itself


def test_bad_inputs_get_clear_errors(model_dir, tmp_path):
    with pytest.raises(TypeError, match="list of strings"):
        embed.text("just a string", model=str(model_dir))
    with pytest.raises(ValueError, match="task_type"):
        embed.text(["x"], model=str(model_dir), task_type="search")
    with pytest.raises(ValueError, match="text model"):
        embed.image([fakes.draw("red circle")], model="builtin:all-MiniLM-L6-v2")
    with pytest.raises(FileNotFoundError, match="model not found"):
        embed.text(["x"], model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no model given"):
        embed.text(["x"])
    with pytest.raises(FileNotFoundError, match="not found"):
        embed.image([str(tmp_path / "missing.png")], model=str(model_dir))
    from latentspace.data.images import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="corrupt.png"):
        (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n garbage")
        embed.image([str(tmp_path / "corrupt.png")], model=str(model_dir))


def test_vision_model_refuses_a_text_model_of_another_space(model_dir, tmp_path):
    # Record a different space in a copy of the directory: loading must fail and say why.
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["space"] = SpaceIdentity("nomic-embed-text-v1.5", "0123456789abcdef", 384).to_dict()
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpaceMismatchError, match="nomic-embed-text-v1.5.*all-MiniLM-L6-v2"):
        PairedModel.load(other)


def test_broken_model_directory(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PairedModel.load(broken)
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a latentspace model directory"):
        PairedModel.load(broken)


def test_local_images_run_on_the_runtime_layer_and_say_which(model_dir):
    images = [fakes.draw(c) for c in fakes.CONCEPTS[:4]]
    auto = embed.image(images, model=model_dir)  # the default: auto's choice for this machine
    exact = embed.image(images, model=model_dir, runtime="torch", precision="fp32")
    assert exact["runtime"] == "torch-fp32" and auto["runtime"] != ""
    cosines = (torch.tensor(auto["embeddings"]) * torch.tensor(exact["embeddings"])).sum(dim=1)
    assert cosines.min() >= 0.999
    reference = PairedModel.load(model_dir).embed_images(images)
    torch.testing.assert_close(torch.tensor(exact["embeddings"]), reference, atol=1e-6, rtol=0)
    assert embed.text(["a red heart"], model=str(model_dir))["runtime"] == "torch-fp32"  # text: exact by default
    with pytest.raises(ValueError, match="no torch runtime at bf16"):
        embed.image(images, model=model_dir, runtime="torch", precision="bf16")
