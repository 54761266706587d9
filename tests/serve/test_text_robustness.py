"""The text path under load and under arbitrary Unicode, against a real uvicorn server.

- 32 clients send texts of widely mixed lengths (1 to ~500 tokens, past the model's limit) and
  images at once: no 5xx, and every vector equals the answer for that input alone.
- Any string JSON can carry, lone surrogates and control characters included: never a 5xx, a
  text that is not valid Unicode is a 422 naming its index, and the connection stays usable.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from latentspace.models.load import load
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

WORDS = ["cat", "heart", "pizza", "Köln", "漢字", "rocket", "🚀", "rain", "the", "a", "supercalifragilistic"]


@pytest.fixture(scope="module")
def server(served_dir):
    settings = ServeSettings(
        models=[f"tiny={served_dir}"],
        max_items=16,
        max_queue_items=4096,
        decode_threads=2,
        image_runtime="torch",  # compared with local mode to 1e-5: PyTorch, not auto
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(settings) as live:
        yield live.wait_ready()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 5, 20, 60, 200, 400]))) for _ in range(n)]


def test_32_clients_mixed_lengths_and_images_no_5xx_and_exact_answers(server, served_dir):
    model = load(str(served_dir))
    texts = _texts(120, seed=0)
    lengths = [len(ids) for ids in model.tokenize(texts, "search_document")]
    assert min(lengths) <= 5 and max(lengths) == model.max_tokens  # short ones and ones cut at the limit
    want_text = {t: model.embed_texts([t], "search_document")[0].numpy() for t in texts}  # each alone
    images = {c: fakes.png_bytes(fakes.draw(c, size=24 + 4 * i)) for i, c in enumerate(fakes.CONCEPTS)}
    want_image = {c: model.embed_images([b])[0].numpy() for c, b in images.items()}
    n_requests, deadline = 1600, time.monotonic() + 240
    statuses: list[int] = []

    def client(worker: int) -> None:
        rng = random.Random(worker)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(worker, n_requests, 32):
                if time.monotonic() > deadline:
                    return
                if i % 5 == 4:
                    concept = rng.choice(fakes.CONCEPTS)
                    r = http.post("/v1/embedding/image", files=[("images", ("x.png", images[concept]))])
                    statuses.append(r.status_code)
                    assert r.status_code == 200, r.text
                    np.testing.assert_allclose(r.json()["embeddings"][0], want_image[concept], atol=1e-5)
                else:
                    batch = rng.sample(texts, rng.choice([1, 1, 1, 3]))
                    r = http.post("/v1/embedding/text", json={"texts": batch, "task_type": "search_document"})
                    statuses.append(r.status_code)
                    assert r.status_code == 200, r.text
                    np.testing.assert_allclose(r.json()["embeddings"], [want_text[t] for t in batch], atol=1e-5)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(client, range(32)))  # re-raises the first failed assertion
    assert len(statuses) >= n_requests // 2 and set(statuses) == {200}


def _post(http: httpx.Client, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes non-ASCII as \\uXXXX, so a lone surrogate travels as valid JSON (as
    # clients that cut UTF-16 text send it); httpx's json= would fail to encode it client-side.
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:  # one keep-alive connection for all examples
        yield client


# Every code point JSON can carry, lone surrogates (category Cs) and controls included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)


@hyp_settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(ANY_TEXT, min_size=1, max_size=4))
@example(texts=["\ud800"])
@example(texts=["ok", "cut \udcff here", "\ud83d"])
@example(texts=["\x00\x01\x1f\x7f", "\u200b\ufeff", "\U0010ffff", ""])
def test_any_unicode_is_embedded_or_refused_with_422_never_5xx(http, texts):
    bad = [i for i, t in enumerate(texts) if any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    for path, body in (("/v1/embedding/text", {"texts": texts}), ("/v1/embeddings", {"input": texts})):
        response = _post(http, path, body)
        if bad:
            assert response.status_code == 422, response.text
            assert f"text {bad[0]} is not valid Unicode" in response.json()["detail"]
        else:
            assert response.status_code == 200, response.text
            assert len(response.json()["embeddings" if "embedding/" in path else "data"]) == len(texts)
    # the same keep-alive connection still answers
    assert _post(http, "/v1/embedding/text", {"texts": ["still here"]}).status_code == 200


def test_a_lone_surrogate_is_a_422_naming_it_and_the_connection_survives(http):
    response = http.post(
        "/v1/embedding/text",
        content=b'{"texts": ["fine", "cut \\udcff here"]}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and "text 1 is not valid Unicode" in response.json()["detail"]
    assert http.post("/v1/embedding/text", json={"texts": ["next request"]}).status_code == 200
