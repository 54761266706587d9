"""Nomic's published pair as one latent space: release detection, the text recipe per release,
pairing a vision directory with its text model, and the pair served under Nomic's names."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.config import TextTowerConfig
from latentspace.models.load import load
from latentspace.models.nomic.pair import UNPAIRED, NomicVisionModel
from latentspace.models.nomic.release import detect_release
from latentspace.models.text_tower import NOMIC_PREFIXES, TextTower
from latentspace.serve.settings import ServeSettings
from latentspace.space import SpaceMismatchError

import fakes
import fakes_nomic_text
from fakes import LiveServer

# --- which release a directory holds -------------------------------------------------------------


def _dir(root: Path, name: str, config: dict | None = None, readme: str | None = None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "nomic_bert"}))
    if readme is not None:
        (path / "README.md").write_text(readme)
    return path


def test_release_is_read_from_name_or_path_then_directory_then_model_card(tmp_path):
    named = _dir(tmp_path, "snapshot", {"_name_or_path": "nomic-ai/nomic-embed-text-v1.5"})
    assert detect_release(named).version == "v1.5" and "_name_or_path" in detect_release(named).source
    # _name_or_path wins over the directory's own name
    assert (
        detect_release(
            _dir(tmp_path, "nomic-embed-text-v1.5-copy", {"_name_or_path": "nomic-ai/nomic-embed-text-v1"})
        ).version
        == "v1"
    )
    assert detect_release(_dir(tmp_path, "nomic-embed-text-v1")).version == "v1"
    assert detect_release(_dir(tmp_path, "my-model-v1.5")).version == "v1.5"
    cache = tmp_path / "models--nomic-ai--nomic-embed-vision-v1.5" / "snapshots"
    assert detect_release(_dir(cache, "af2246f")).text_name == "nomic-embed-text-v1.5"
    card = _dir(tmp_path, "weights", readme="---\nlicense: apache-2.0\n---\n# nomic-embed-text-v1.5\n...")
    assert detect_release(card).version == "v1.5" and detect_release(card).source == "README.md"
    assert detect_release(_dir(tmp_path, "nomic-bert-2048")) is None
    assert detect_release(_dir(tmp_path, "nomic-embed-text-v10")) is None  # not v1


# --- the text recipe per release -----------------------------------------------------------------


def test_v15_text_gets_layer_norm_and_nomic_prefixes_and_v1_does_not(nomic_models):
    v15 = TextTower(TextTowerConfig(path=str(nomic_models / "nomic-embed-text-v1.5")))
    v1 = TextTower(TextTowerConfig(path=str(nomic_models / "nomic-embed-text-v1")))
    assert v15.layer_norm and not v1.layer_norm
    assert v15.prefixes == v1.prefixes == NOMIC_PREFIXES and v15.prefixes["search_query"] == "search_query: "
    assert v15.name == "nomic-embed-text-v1.5" and v15.space.name == "nomic-embed-text-v1.5"
    # v1.5's recipe: pool -> layer norm (no affine) -> truncate -> normalise, checked by hand
    ids = v15.token_ids(["a red heart"], "search_query")
    input_ids = torch.tensor(ids)
    hidden = v15.transformer(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    pooled = F.layer_norm(hidden.mean(1), (hidden.shape[-1],))
    want = F.normalize(pooled[:, :16], dim=-1)
    torch.testing.assert_close(v15.encode(["a red heart"], "search_query", dimensionality=16), want, atol=1e-6, rtol=0)
    # a prefix is plain text: "search_query: " changes the ids and the vector
    assert ids[0][:4] == v15.tokenizer("search_query: a red heart")["input_ids"][:4]
    assert not torch.equal(v15.encode(["a"], "search_query"), v15.encode(["a"], "search_document"))


def test_an_unnamed_release_warns_and_takes_the_v1_recipe_unless_told(tmp_path, caplog):
    path = fakes_nomic_text.write_tiny_nomic_text_dir(tmp_path / "weights", seed=0)
    with caplog.at_level(logging.WARNING):
        tower = TextTower(TextTowerConfig(path=str(path)))
    assert not tower.layer_norm and "cannot tell nomic-embed-text v1 from v1.5" in caplog.text
    assert tower.name == "weights"
    assert TextTower(TextTowerConfig(path=str(path), layer_norm=True)).layer_norm


def test_directory_prompts_win_and_trust_remote_code_is_ignored_with_a_warning(tmp_path, caplog):
    path = fakes_nomic_text.write_tiny_nomic_text_dir(
        tmp_path / "nomic-embed-text-v1.5",
        sentence_transformers=True,
        prompts={"search_query": "query: ", "search_document": "doc: "},
    )
    with caplog.at_level(logging.WARNING):
        tower = TextTower(TextTowerConfig(path=str(path), trust_remote_code=True))
    assert tower.prefixes == {"search_query": "query: ", "search_document": "doc: "}
    assert "trust_remote_code is ignored" in caplog.text


def test_long_texts_run_alone_under_dynamic_ntk(tmp_path):
    """With rotary_scaling_factor set, a text past the trained length runs in a batch of its own:
    a short text gets the same vector whatever it is batched with."""
    path = fakes_nomic_text.write_tiny_nomic_text_dir(tmp_path / "nomic-embed-text-v1.5", max_trained_positions=16)
    tower = TextTower(TextTowerConfig(path=str(path), rotary_scaling_factor=2.0))
    long = " ".join(["word"] * 40)
    alone = tower.encode(["a cat"], "search_query")
    together = tower.encode(["a cat", long], "search_query")
    torch.testing.assert_close(together[:1], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(together[1:], tower.encode([long], "search_query"), atol=1e-6, rtol=0)
    plain = TextTower(TextTowerConfig(path=str(path)))
    assert plain.space != tower.space  # the scaling changes long-text vectors, so it is part of the space
    assert not torch.allclose(plain.encode([long], "search_query"), together[1:], atol=1e-4)


# --- pairing a vision directory with its text model ----------------------------------------------


def _lone(nomic_models: Path, tmp_path: Path, version: str = "v1.5") -> Path:
    return Path(
        shutil.copytree(
            nomic_models / f"nomic-embed-vision-{version}", tmp_path / "lone" / f"nomic-embed-vision-{version}"
        )
    )


def test_sibling_text_model_is_found_and_text_is_bit_identical(nomic_models):
    vision = load(str(nomic_models / "nomic-embed-vision-v1.5"))
    text = load(str(nomic_models / "nomic-embed-text-v1.5"))
    assert vision.identity == text.identity and vision.modalities == ("text", "image")
    texts = ["a red heart", "", "Grüße 漢字"]
    assert torch.equal(vision.embed_texts(texts, "search_document"), text.embed_texts(texts, "search_document"))


def test_a_partner_is_shared_not_loaded_again(nomic_models, tmp_path):
    text = load(str(nomic_models / "nomic-embed-text-v1.5"))
    vision = load(str(_lone(nomic_models, tmp_path)), partners=[load("builtin:all-MiniLM-L6-v2"), text])
    assert vision.text is text.text and vision.identity == text.identity


def test_the_other_release_is_refused_and_check_compat_fails(nomic_models, tmp_path):
    lone = _lone(nomic_models, tmp_path)
    with pytest.raises(
        SpaceMismatchError, match="nomic-embed-vision-v1.5 .* lives in nomic-embed-text-v1.5's .* nomic-embed-text-v1 "
    ):
        load(f"{lone}?text={nomic_models / 'nomic-embed-text-v1'}")
    with pytest.raises(SpaceMismatchError, match="defined by nomic-embed-text"):
        load(f"{lone}?text=builtin:all-MiniLM-L6-v2")
    # a v1 partner is not taken for a v1.5 vision model: it stays unpaired
    assert load(str(lone), partners=[load(str(nomic_models / "nomic-embed-text-v1"))]).modalities == ("image",)
    runner = CliRunner()
    fails = runner.invoke(
        app,
        [
            "check-compat",
            str(nomic_models / "nomic-embed-vision-v1.5"),
            "--text",
            str(nomic_models / "nomic-embed-text-v1"),
        ],
    )
    assert fails.exit_code == 1 and "different latent spaces" in fails.output
    passes = runner.invoke(
        app,
        [
            "check-compat",
            str(nomic_models / "nomic-embed-vision-v1"),
            "--text",
            str(nomic_models / "nomic-embed-text-v1"),
        ],
    )
    assert passes.exit_code == 0 and "bit-identical" in passes.output


def test_without_a_text_model_it_embeds_images_in_an_unverified_space(nomic_models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        vision = load(str(_lone(nomic_models, tmp_path)))
    assert isinstance(vision, NomicVisionModel) and vision.modalities == ("image",)
    assert vision.identity.fingerprint == UNPAIRED and vision.identity.name == "nomic-embed-text-v1.5"
    assert "no nomic-embed-text model found" in caplog.text
    rows = vision.embed_images([Image.new("RGB", (50, 20), "red")])
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(1))
    # the image vector is the published model's: token 0 of last_hidden_state, normalised
    pixels = vision.preprocess_image(Image.new("RGB", (50, 20), "red"))[None]
    torch.testing.assert_close(rows, vision.vision.embed(pixels), atol=1e-6, rtol=0)


# --- served under Nomic's names, on every image backend -----------------------------------------


def test_the_pair_served_under_nomic_names_shares_one_space(nomic_models, tmp_path):
    lone = _lone(nomic_models, tmp_path)
    settings = ServeSettings(
        models=[
            f"nomic-embed-vision-v1.5={lone}",  # listed first, loaded after its partner
            f"nomic-embed-text-v1.5={nomic_models / 'nomic-embed-text-v1.5'}",
        ],
        decode_threads=1,
        image_runtime="torch",  # compared with local mode to 1e-5: PyTorch, not auto
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(settings) as server:
        server.wait_ready()
        models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
        assert models["nomic-embed-vision-v1.5"]["space"] == models["nomic-embed-text-v1.5"]["space"]
        assert models["nomic-embed-vision-v1.5"]["kind"] == "nomic-vision"
        registry = server.app.state.registry
        assert (
            registry.slots["nomic-embed-vision-v1.5"].model.text is registry.slots["nomic-embed-text-v1.5"].model.text
        )
        text = httpx.post(
            server.url + "/v1/embedding/text",
            json={
                "model": "nomic-embed-text-v1.5",
                "texts": ["a red square"],
                "task_type": "search_query",
                "dimensionality": 16,
            },
        ).json()
        png = io.BytesIO()
        Image.new("RGB", (30, 30), "red").save(png, format="PNG")
        image = httpx.post(
            server.url + "/v1/embedding/image",
            data={"model": "nomic-embed-vision-v1.5"},
            files=[("images", ("red.png", png.getvalue()))],
        ).json()
    local_text = load(str(nomic_models / "nomic-embed-text-v1.5")).embed_texts(
        ["a red square"], "search_query", dimensionality=16
    )
    local_image = load(str(nomic_models / "nomic-embed-vision-v1.5")).embed_images([png.getvalue()])
    np.testing.assert_allclose(text["embeddings"], local_text.numpy(), atol=1e-5)
    np.testing.assert_allclose(image["embeddings"], local_image.numpy(), atol=1e-5)
    assert text["space"] == image["space"]


def test_openvino_serves_the_nomic_vision_model(nomic_models):
    pytest.importorskip("openvino")
    from latentspace.runtime import EXACT, RuntimeSettings
    from latentspace.serve.models import load_served_model

    spec = str(nomic_models / "nomic-embed-vision-v1.5")
    reference = load_served_model("ref", spec, image=EXACT)
    fast = load_served_model("fast", spec, image=RuntimeSettings(runtime="openvino", precision="fp32"))
    assert fast.describe()["image_runtime"] == "openvino-fp32"
    pixels = torch.stack([reference.model.preprocess_image(fakes.draw(c).convert("RGB")) for c in fakes.CONCEPTS[:5]])
    want = reference.model.image_rows(pixels)
    for batch in (pixels, pixels[:1]):
        assert F.cosine_similarity(fast.model.image_rows(batch), want[: len(batch)]).min() >= 0.99999
