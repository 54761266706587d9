"""Remote mode of embed.text / embed.image against a real server, and the client's retries."""

from __future__ import annotations

import base64
import json
import socket
import time

import numpy as np
import pytest

from latentspace import embed
from latentspace.client import RemoteClient, RemoteError, RetryPolicy
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

# Local mode pinned to PyTorch fp32, as the servers compared with it are: equal to 1e-5, not
# within the cosine bound only.
EXACT = {"runtime": "torch", "precision": "fp32"}

KEY = "client-test-key-42"
FAST_RETRY = RetryPolicy(max_retries=2, backoff_s=0.01)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text_tower):
    return fakes.save_tiny_model_dir(tmp_path_factory.mktemp("client") / "tiny", text_tower)


@pytest.fixture(scope="module")
def image_host():
    with fakes.StaticHost(
        {"/pic.png": (200, {"Content-Type": "image/png"}, fakes.png_bytes(fakes.draw("red square")))}
    ) as host:
        yield host


@pytest.fixture(scope="module")
def server(model_dir, image_host):
    # max_items 5 is below the client's chunk sizes: the client must split to fit
    config = ServeSettings(
        models=[f"tiny={model_dir}"],
        api_keys=(KEY,),
        max_items=5,
        allow_urls=True,
        url_allowed_hosts=("localhost",),
        image_runtime="torch",  # compared with local mode to 1e-5: PyTorch, not auto
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(config) as live:
        yield live.wait_ready()


def test_remote_text_equals_local_in_order(server, model_dir):
    texts = [f"{c} number {i}" for i, c in enumerate(fakes.CONCEPTS * 3)]  # 36 texts, many requests
    remote = embed.text(
        texts, model="tiny", task_type="search_query", dimensionality=128, base_url=server.url, api_key=KEY
    )
    local = embed.text(texts, model=str(model_dir), task_type="search_query", dimensionality=128)
    np.testing.assert_allclose(remote["embeddings"], local["embeddings"], atol=1e-5)
    assert remote["usage"] == local["usage"] and remote["space"] == local["space"] and remote["model"] == "tiny"


def test_remote_images_of_every_kind_keep_their_order(server, model_dir, image_host, tmp_path):
    rgba = fakes.draw("blue circle")
    path = tmp_path / "c.png"
    rgba.save(path)
    url = f"http://localhost:{image_host.port}/pic.png"
    inputs = [str(path), rgba, url, path.read_bytes(), rgba.convert("P"), rgba.convert("L"), url, rgba.convert("CMYK")]
    remote = embed.image(inputs, model="tiny", inference_mode="remote", base_url=server.url, api_key=KEY)
    local_inputs = [fakes.png_bytes(fakes.draw("red square")) if x == url else x for x in inputs]
    local = embed.image(local_inputs, model=str(model_dir), **EXACT)
    np.testing.assert_allclose(remote["embeddings"], local["embeddings"], atol=1e-5)


def data_url(image_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes).decode()


def test_image_takes_data_urls_locally_and_remotely(server, model_dir):
    pictures = [fakes.png_bytes(fakes.draw(c)) for c in ("red square", "blue circle")]
    want = embed.image(pictures, model=str(model_dir), **EXACT)["embeddings"]
    local = embed.image([data_url(b) for b in pictures], model=str(model_dir), **EXACT)["embeddings"]
    remote = embed.image([data_url(b) for b in pictures], model="tiny", base_url=server.url, api_key=KEY)
    np.testing.assert_allclose(local, want, atol=1e-6)
    np.testing.assert_allclose(remote["embeddings"], want, atol=1e-5)
    with pytest.raises(ValueError, match="image 1: the data URL's data is not valid base64"):
        embed.image([pictures[0], "data:image/png;base64,@@"], model=str(model_dir))
    with pytest.raises(ValueError, match="image 0: http"):
        embed.image(["https://example.com/a.png"], model=str(model_dir))


def test_mixed_equals_separate_text_and_image_calls_locally_and_remotely(server, model_dir, image_host, tmp_path):
    red, blue = fakes.draw("red square"), fakes.draw("blue circle")
    path = tmp_path / "blue.png"
    blue.save(path)
    url = f"http://localhost:{image_host.port}/pic.png"  # the host serves the red square
    items = [
        "a red square",
        path,
        {"type": "text", "text": "https://example.com/not-fetched.png"},  # a text: typed, or a plain str
        red,
        {"type": "image_url", "image_url": {"url": data_url(fakes.png_bytes(red))}},
        "a blue circle",
        path.read_bytes(),
        {"type": "image", "image": str(path)},
    ]
    texts = embed.text(
        ["a red square", "https://example.com/not-fetched.png", "a blue circle"],
        model=str(model_dir),
        task_type="search_query",
        dimensionality=64,
    )
    images = embed.image([path, red, red, path, path], model=str(model_dir), dimensionality=64, **EXACT)
    t, i = texts["embeddings"], images["embeddings"]
    want = [t[0], i[0], t[1], i[1], i[2], t[2], i[3], i[4]]
    exact = {"image_runtime": "torch", "image_precision": "fp32"}
    local = embed.mixed(items, model=str(model_dir), task_type="search_query", dimensionality=64, **exact)
    np.testing.assert_allclose(local["embeddings"], want, atol=1e-6)
    usage = {**texts["usage"], "images": 5}
    assert local["usage"] == usage and local["space"] == texts["space"] and local["runtime"] == "torch-fp32"
    # remotely, a URL too; eight items against max_items 5: the client splits the request
    remote_items = [*items, {"type": "image", "image": url}]
    remote = embed.mixed(
        remote_items, model="tiny", task_type="search_query", dimensionality=64, base_url=server.url, api_key=KEY
    )
    np.testing.assert_allclose(remote["embeddings"], [*want, i[1]], atol=1e-5)
    assert remote["usage"] == {**usage, "images": 6} and remote["space"] == texts["space"]
    assert remote["model"] == "tiny"


def test_mixed_refuses_what_it_cannot_tell_apart(model_dir):
    with pytest.raises(TypeError, match="input 1: int is neither a text nor an image"):
        embed.mixed(["a text", 3], model=str(model_dir))
    with pytest.raises(ValueError, match="input 0: a dict must be"):
        embed.mixed([{"type": "video", "video": "x"}], model=str(model_dir))
    with pytest.raises(ValueError, match="input 0: the data URL"):
        embed.mixed([{"type": "image", "image": "data:image/png,raw"}], model="tiny", base_url="http://127.0.0.1:9")
    with pytest.raises(TypeError, match="a list"):
        embed.mixed("a text", model=str(model_dir))
    assert embed.mixed([], model=str(model_dir))["embeddings"] == []


def test_server_and_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("LATENTSPACE_BASE_URL", server.url)
    monkeypatch.setenv("LATENTSPACE_API_KEY", KEY)
    out = embed.text(["hello"], model="tiny", inference_mode="remote")
    assert len(out["embeddings"][0]) == 384
    monkeypatch.setenv("LATENTSPACE_API_KEY", "wrong-key-123")
    with pytest.raises(RemoteError, match="401.*invalid API key") as error:
        embed.text(["hello"], model="tiny", inference_mode="remote")
    assert error.value.status == 401


def test_client_errors_are_not_retried(server):
    client = RemoteClient(server.url, KEY, retry=FAST_RETRY)
    with pytest.raises(RemoteError, match="unknown model 'nope'"):
        client.text(["a"], model="nope", task_type="search_query", dimensionality=None)
    with pytest.raises(RemoteError, match="image 0.*not a decodable image"):
        client.image([b"not an image"], model="tiny", dimensionality=None)
    with pytest.raises(FileNotFoundError):
        client.image(["/no/such/file.png"], model="tiny", dimensionality=None)


def _nomic_answer(n: int) -> bytes:
    return json.dumps(
        {"embeddings": [[1.0, 0.0]] * n, "usage": {"prompt_tokens": 2, "total_tokens": 2}, "model": "m", "space": "s"}
    ).encode()


def test_retries_429_honouring_retry_after_then_succeeds():
    answers = [
        (429, {"Retry-After": "1"}, b'{"detail": "busy"}'),
        (503, {}, b'{"detail": "loading"}'),
        (200, {"Content-Type": "application/json"}, _nomic_answer(1)),
    ]
    with fakes.StaticHost({"/v1/embedding/text": answers}) as host:
        client = RemoteClient(f"http://127.0.0.1:{host.port}", retry=RetryPolicy(max_retries=3, backoff_s=0.01))
        started = time.monotonic()
        out = client.text(["a"], model="m", task_type="search_query", dimensionality=None)
        assert time.monotonic() - started >= 1.0  # waited as Retry-After said, not the 10 ms backoff
        assert out["embeddings"] == [[1.0, 0.0]] and len(host.hits) == 3


def test_gives_up_after_the_retry_budget_with_the_last_error():
    with fakes.StaticHost({"/v1/embedding/text": (502, {}, b"bad gateway")}) as host:
        client = RemoteClient(f"http://127.0.0.1:{host.port}", retry=FAST_RETRY)
        with pytest.raises(RemoteError, match="after 3 attempts.*HTTP 502"):
            client.text(["a"], model="m", task_type="search_query", dimensionality=None)
        assert len(host.hits) == 3


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RemoteClient(f"http://127.0.0.1:{port}", retry=FAST_RETRY)
    with pytest.raises(RemoteError, match="after 3 attempts.*ConnectError"):
        client.text(["a"], model="m", task_type="search_query", dimensionality=None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="LATENTSPACE_BASE_URL"):
        RemoteClient(None)
    with pytest.raises(ValueError, match="http"):
        RemoteClient("localhost:8000")
    with pytest.raises(ValueError, match="inference_mode"):
        embed.text(["a"], model="x", inference_mode="cloud")
