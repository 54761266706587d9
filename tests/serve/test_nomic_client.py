"""The official `nomic` client from PyPI, unchanged, against our server on loopback.

How the client is pointed here (nomic 3.x, nomic/dataset.py `AtlasClass` and nomic/cli.py):
- `nomic.login(key)` stores the key in ~/.nomic/credentials. A key starting with "nk-" is stored
  as is; any other key is taken for a refresh token and exchanged at
  https://api-atlas.nomic.ai/v1/user/token/refresh/<key>, so our keys must start with "nk-".
- the environment variable ATLAS_API_PATH (scheme, host and port: http://127.0.0.1:8000)
  replaces the https://api-atlas.nomic.ai base URL. It is read once, when the client first
  embeds, and the connection is kept in `nomic.embed.atlas_class` for the rest of the process.
- every request carries `Authorization: Bearer <key>`; the client first GETs /v1/user (and only
  logs a warning when that is not 200), then POSTs /v1/embedding/text (JSON, at most 10 texts a
  request, in parallel) or /v1/embedding/image (one JPEG `images` file part per image).
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nomic", reason="the official Nomic client is not installed (pip install nomic)")
import nomic.cli  # noqa: E402
import nomic.embed  # noqa: E402
import requests  # noqa: E402 - a dependency of nomic's, not of latentspace's

from latentspace import embed  # noqa: E402
from latentspace.config import BUILTIN_TEXT_MODEL  # noqa: E402
from latentspace.serve.settings import ServeSettings  # noqa: E402

import fakes  # noqa: E402
from fakes import LiveServer  # noqa: E402

# Local mode pinned to PyTorch fp32, as the servers compared with it are: equal to 1e-5, not
# within the cosine bound only.
EXACT = {"runtime": "torch", "precision": "fp32"}

KEY = "nk-latentspace-test-key-0123"  # "nk-": the client sends it as is (see the module docstring)
TEXT_MODEL = "all-MiniLM-L6-v2"  # the name clients pass as `model`; served from BUILTIN_TEXT_MODEL
TEXTS = [
    f"text number {i}: {t}"
    for i, t in enumerate(
        [
            "a red heart",
            "pizza with cheese",
            "a rocket",
            "a blue square",
            "two cats on a sofa",
            "rain",
            "the stock market fell",
            "a green triangle",
            "jazz music",
            "a yellow circle",
            "snow",
            "tea",
        ]
    )
]


@pytest.fixture(scope="module")
def lone_vision(nomic_models, tmp_path_factory) -> Path:
    """nomic-embed-vision-v1.5 on its own (no sibling text directory): the server pairs it with the
    text model it serves beside it."""
    import shutil

    return Path(
        shutil.copytree(
            nomic_models / "nomic-embed-vision-v1.5", tmp_path_factory.mktemp("alone") / "nomic-embed-vision-v1.5"
        )
    )


@pytest.fixture(scope="module")
def server(served_dir, nomic_models, lone_vision):
    settings = ServeSettings(
        models=[
            f"{TEXT_MODEL}={BUILTIN_TEXT_MODEL}",
            f"tiny={served_dir}",
            f"nomic-embed-text-v1.5={nomic_models / 'nomic-embed-text-v1.5'}",
            f"nomic-embed-vision-v1.5={lone_vision}",
        ],
        api_keys=(KEY,),
        max_items=16,
        max_queue_items=64,
        decode_threads=1,
        image_runtime="torch",
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(settings) as live:
        yield live.wait_ready()


@pytest.fixture
def sent(server, monkeypatch):
    """Every HTTP request the client makes (nomic calls requests.get/post, which go through
    Session.request); after the test, checks that none left loopback for Nomic's hosts."""
    calls = []
    original = requests.Session.request

    def record(self, method, url, *args, **kwargs):
        calls.append(
            SimpleNamespace(method=method, url=url, **{k: kwargs.get(k) for k in ("headers", "json", "data", "files")})
        )
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", record)
    yield calls
    assert calls and all(c.url.startswith(server.url + "/") for c in calls), [c.url for c in calls]


@pytest.fixture
def client(server, sent, tmp_path, monkeypatch):
    """`nomic.embed`, logged in with our key and pointed at our server; ~/.nomic lives in tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    # nomic resolves ~/.nomic once, when it is imported (before this fixture): follow HOME here.
    monkeypatch.setattr(nomic.cli, "nomic_base_path", tmp_path / ".nomic")
    nomic.login(KEY)
    monkeypatch.setenv("ATLAS_API_PATH", server.url)
    # The client keeps its connection (base URL, key) in a module global, made on first use:
    # start from none, so this server and key are read, and drop it again after the test.
    monkeypatch.setattr(nomic.embed, "atlas_class", None)
    return nomic.embed


def _requests_to(sent, path):
    return [c for c in sent if c.url.endswith(path)]


def test_text_equals_local_mode(client, sent):
    for task, dim in (("search_query", None), ("search_document", 64)):
        got = client.text(TEXTS, model=TEXT_MODEL, task_type=task, dimensionality=dim)
        want = embed.text(TEXTS, model=BUILTIN_TEXT_MODEL, task_type=task, dimensionality=dim)
        assert len(got["embeddings"]) == len(TEXTS) and len(got["embeddings"][0]) == (dim or 384)
        np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
        # the client sums `usage` over its requests and adds inference_mode itself
        assert got["usage"] == want["usage"] and got["model"] == TEXT_MODEL and got["inference_mode"] == "remote"

    posts = _requests_to(sent, "/v1/embedding/text")
    assert len(posts) == 2 * len(TEXTS)  # 12 texts -> 10 threads -> one text per request
    for call in posts:
        assert set(call.json) == {"texts", "model", "task_type", "dimensionality", "long_text_mode"}
        assert call.headers["Authorization"] == f"Bearer {KEY}"
    assert [c.method.upper() for c in sent if c.url.endswith("/v1/user")] == ["GET"]  # once, when it connects


def test_long_text_mean_equals_local_mode(client):
    long = " ".join(f"sentence number {i} talks about emoji." for i in range(120))  # ~900 tokens
    got = client.text([long, "short"], model=TEXT_MODEL, long_text_mode="mean")
    want = embed.text([long, "short"], model=BUILTIN_TEXT_MODEL, long_text_mode="mean")
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
    assert got["usage"] == want["usage"]


def _as_nomic_sends(img: Image.Image) -> bytes:
    """What nomic.embed.image uploads for an image under 1024 px a side: JPEG, Pillow's defaults."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def test_image_pil_and_path_equal_local_mode(client, sent, served_dir, tmp_path):
    path = tmp_path / "red circle.png"
    path.write_bytes(fakes.png_bytes(fakes.draw("red circle", size=64)))  # RGBA: the client converts paths to RGB
    pil = fakes.draw("blue square", size=48).convert("RGB")  # PIL images are sent as they are: RGBA fails in PIL
    got = client.image([pil, str(path)], model="tiny")

    # The client re-encodes every image as JPEG, so the server sees these bytes, not the PNG.
    jpegs = [_as_nomic_sends(pil), _as_nomic_sends(Image.open(path).convert("RGB"))]
    uploads = [part for call in _requests_to(sent, "/v1/embedding/image") for part in call.files]
    assert sorted(uploads) == sorted(("images", data) for data in jpegs)  # requests names each file part "images"
    want = embed.image(jpegs, model=str(served_dir), **EXACT)
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
    assert got["model"] == "tiny" and got["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


def test_nomic_names_are_the_clients_defaults_and_share_one_space(client, server, nomic_models):
    """The client's default models (nomic-embed-text-v1.5 for text, nomic-embed-vision-v1.5 for
    images) served from Nomic's directories: no model= needed, one space for both."""
    pil = fakes.draw("red circle", size=48).convert("RGB")
    texts = client.text(["a red circle", "a blue square"], task_type="search_query")
    images = client.image([pil])
    local_text = embed.text(
        ["a red circle", "a blue square"], model=str(nomic_models / "nomic-embed-text-v1.5"), task_type="search_query"
    )
    local_image = embed.image([_as_nomic_sends(pil)], model=str(nomic_models / "nomic-embed-vision-v1.5"), **EXACT)
    np.testing.assert_allclose(texts["embeddings"], local_text["embeddings"], atol=1e-5)
    np.testing.assert_allclose(images["embeddings"], local_image["embeddings"], atol=1e-5)
    assert texts["model"] == "nomic-embed-text-v1.5" and images["model"] == "nomic-embed-vision-v1.5"
    listed = {
        m["id"]: m
        for m in requests.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    }
    assert listed["nomic-embed-text-v1.5"]["space"] == listed["nomic-embed-vision-v1.5"]["space"] == local_text["space"]


def test_the_clients_connection_check_passes(client, server):
    response = requests.get(server.url + "/v1/user", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert requests.get(server.url + "/v1/user").status_code == 401


def test_wrong_key_and_unknown_model_are_clear_errors(client, tmp_path):
    with pytest.raises(Exception, match=r"404.*unknown model .*nope"):
        client.text(["a cat"], model="nope")
    nomic.login("nk-not-the-servers-key")
    nomic.embed.atlas_class = None  # reconnect with the new key (the fixture restores it)
    with pytest.raises(Exception, match="401"):
        client.text(["a cat"], model=TEXT_MODEL)
    assert (Path(tmp_path) / ".nomic" / "credentials").is_file()  # nothing written outside tmp_path
