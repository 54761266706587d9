"""The HTTP API against a real uvicorn server on loopback: correct answers, hostile input, limits,
auth, concurrency and a dead inference worker."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from latentspace import embed
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

# Local mode pinned to PyTorch fp32, as the servers compared with it are: equal to 1e-5, not
# within the cosine bound only.
EXACT = {"runtime": "torch", "precision": "fp32"}

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def settings(served_dir, **overrides) -> ServeSettings:
    base = dict(
        models=[f"tiny={served_dir}"],
        api_keys=(KEY,),
        max_items=8,
        max_queue_items=256,
        max_body_bytes=2 * 2**20,
        max_pixels=1_000_000,
        decode_threads=2,
        image_runtime="torch",  # compared with local mode to 1e-5: PyTorch, not auto
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    return ServeSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def server(served_dir):
    with LiveServer(settings(served_dir)) as live:
        yield live.wait_ready()


def png(concept="red circle", size=32, mode="RGBA") -> bytes:
    return fakes.png_bytes(fakes.draw(concept, size=size).convert(mode))


def post_images(server, files, headers=AUTH, **data):
    return httpx.post(server.url + "/v1/embedding/image", headers=headers, files=files, data=data, timeout=30)


def post_text(server, body, headers=AUTH):
    return httpx.post(server.url + "/v1/embedding/text", headers=headers, json=body, timeout=30)


def assert_error(response, status, *phrases):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for phrase in phrases:
        assert phrase in detail, detail


# --- answers equal local mode ---------------------------------------------------------------------


def test_text_equals_local_mode(server, served_dir):
    texts = ["a red heart", "pizza with cheese", "a rocket"]
    for task, dim in (("search_query", None), ("search_document", 64)):
        body = {"texts": texts, "model": "tiny", "task_type": task, **({"dimensionality": dim} if dim else {})}
        got = post_text(server, body).json()
        want = embed.text(texts, model=str(served_dir), task_type=task, dimensionality=dim)
        np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
        assert got["usage"] == want["usage"] and got["model"] == "tiny" and got["space"] == want["space"]


def test_long_text_mean_equals_local_mode(server, served_dir):
    long = " ".join(f"sentence number {i} talks about emoji." for i in range(120))  # ~900 tokens
    got = post_text(server, {"texts": [long, "short"], "long_text_mode": "mean"}).json()
    want = embed.text([long, "short"], model=str(served_dir), long_text_mode="mean")
    truncated = embed.text([long], model=str(served_dir))
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
    assert got["usage"]["prompt_tokens"] > 512  # every piece counted
    assert not np.allclose(got["embeddings"][0], truncated["embeddings"][0], atol=1e-3)


def test_openai_endpoint_float_and_base64(server, served_dir):
    want = embed.text(["a cat"], model=str(served_dir), dimensionality=32)["embeddings"][0]
    url = server.url + "/v1/embeddings"
    plain = httpx.post(url, headers=AUTH, json={"input": "a cat", "dimensions": 32}).json()
    assert plain["object"] == "list" and plain["data"][0]["index"] == 0
    np.testing.assert_allclose(plain["data"][0]["embedding"], want, atol=1e-5)
    packed = httpx.post(
        url, headers=AUTH, json={"input": ["a cat"], "dimensions": 32, "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, want, atol=1e-5)


def test_images_equal_local_mode_in_any_mode_and_size(server, served_dir):
    inputs = [
        png("red circle", 64, "RGBA"),
        png("blue square", 20, "P"),
        png("green triangle", 1, "L"),
        fakes.png_bytes(fakes.draw("yellow circle").convert("RGB")),
    ]
    jpeg = io.BytesIO()
    fakes.draw("blue circle").convert("RGB").save(jpeg, format="JPEG")
    inputs.append(jpeg.getvalue())
    got = post_images(server, [("images", (f"{i}.img", b)) for i, b in enumerate(inputs)], model="tiny").json()
    want = embed.image(inputs, model=str(served_dir), **EXACT)
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-5)
    assert got["model"] == "tiny" and got["space"] == want["space"]


def test_models_health_and_metrics(server, served_dir, text_tower):
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]
    assert models[0]["id"] == "tiny" and models[0]["dimension"] == 384 and models[0]["status"] == "ready"
    assert models[0]["space"] == str(text_tower.space) and models[0]["modalities"] == ["text", "image"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    post_text(server, {"texts": ["x"]}, headers={})  # a 401 to count
    metrics = httpx.get(server.url + "/metrics").text
    assert 'latentspace_requests_total{route="/v1/embedding/text",status="401"}' in metrics
    assert 'latentspace_items_embedded_total{kind="text",model="tiny"}' in metrics
    for name in ("latentspace_queue_items", "latentspace_batch_items_bucket", "latentspace_request_seconds_bucket"):
        assert name in metrics


# --- hostile input ----------------------------------------------------------------------------------


def _claims_pixels(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "payload, status, phrase",
    [
        (b"", 400, "empty"),
        (b"hello, I am a text file", 400, "not a decodable image"),
        (png()[:60], 400, "not a decodable image"),  # truncated
        (_claims_pixels(30000, 30000), 413, "900000000 pixels"),  # refused by PIL's own guard
        (_claims_pixels(2000, 1000), 413, "2000x1000 pixels exceeds the limit of 1000000"),  # by ours
    ],
)
def test_bad_image_fails_only_its_request(server, payload, status, phrase):
    response = post_images(server, [("images", ("good.png", png())), ("images", ("evil.png", payload))])
    assert_error(response, status, "image 1 (evil.png)", phrase)
    assert post_images(server, [("images", ("good.png", png()))]).status_code == 200  # still serving


def test_unsupported_format_is_415(server):
    tiff = io.BytesIO()
    fakes.draw("red circle").convert("RGB").save(tiff, format="TIFF")
    assert_error(post_images(server, [("images", ("a.tiff", tiff.getvalue()))]), 415, "TIFF", "png")
    assert_error(httpx.post(server.url + "/v1/embedding/image", headers=AUTH, json={"images": []}), 415, "multipart")


def test_request_limits(server):
    assert_error(post_images(server, [("images", (f"{i}.png", png())) for i in range(9)]), 413, "at most 8")
    assert_error(post_text(server, {"texts": ["a"] * 9}), 413, "limit is 8")
    big = b"\x89PNG" + b"\0" * (3 * 2**20)
    assert_error(post_images(server, [("images", ("big.png", big))]), 413, "exceeds the limit")
    assert_error(post_images(server, [], model="tiny"), 400, "no images")
    assert_error(post_images(server, [], images="not-a-file"), 400, "file part")


def test_chunked_body_over_the_cap_is_413(server):
    def stream():  # no Content-Length: the cap is enforced while reading
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(
        server.url + "/v1/embedding/text", headers={**AUTH, "content-type": "application/json"}, content=stream()
    )
    assert_error(response, 413, "exceeds the limit")


def test_validation_and_unknown_model(server):
    assert_error(post_text(server, {"texts": ["a"], "task_type": "poetry"}), 422, "task_type")
    assert_error(post_text(server, {"texts": ["a"], "dimensionality": 0}), 422, "dimensionality")
    assert_error(post_text(server, {"texts": ["a"], "dimensionality": 999}), 422, "between 1 and 384")
    assert_error(post_text(server, {"texts": "a bare string"}), 422, "texts")
    assert_error(post_text(server, {"texts": ["a"], "model": "nope"}), 404, "unknown model 'nope'", "tiny")
    assert_error(post_images(server, [("images", ("a.png", png()))], model="nope"), 404, "unknown model")


def test_auth(server):
    for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": KEY}):
        response = post_text(server, {"texts": ["a"]}, headers=headers)
        assert_error(response, 401, "API key")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key


def test_urls_are_off_by_default(server):
    response = httpx.post(server.url + "/v1/embedding/image", headers=AUTH, data={"urls": ["http://example.com/a.png"]})
    assert_error(response, 400, "disabled", "--allow-urls")


# --- concurrency, overload and failure ------------------------------------------------------------------


def test_many_clients_get_their_own_answers_in_order(server, served_dir):
    concepts = [f"{c} {s}" for c in fakes.COLOURS for s in fakes.SHAPES]
    requests = [[concepts[(i + j) % len(concepts)] for j in range(1 + i % 4)] for i in range(32)]
    images = {c: fakes.png_bytes(fakes.draw(c)) for c in concepts}
    want_text = {c: v for c, v in zip(concepts, embed.text(concepts, model=str(served_dir))["embeddings"])}
    want_image = {
        c: v
        for c, v in zip(
            concepts, embed.image([images[c] for c in concepts], model=str(served_dir), **EXACT)["embeddings"]
        )
    }

    def client(i: int):
        texts = requests[i]
        if i % 2:
            got = post_text(server, {"texts": texts}).json()["embeddings"]
            want = [want_text[t] for t in texts]
        else:
            response = post_images(server, [("images", (f"{t}.png", images[t])) for t in texts])
            assert response.status_code == 200, response.text
            got = response.json()["embeddings"]
            want = [want_image[t] for t in texts]
        np.testing.assert_allclose(got, want, atol=1e-5)
        return True

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(client, range(32)))
    batches = httpx.get(server.url + "/metrics").text
    assert "latentspace_batch_items_count" in batches


def _slow_forward(slot, seconds: float):
    original = slot.model.text_rows

    def slow(ids):
        time.sleep(seconds)
        return original(ids)

    return original, slow


def test_full_queue_answers_429_with_retry_after(served_dir):
    with LiveServer(settings(served_dir, max_queue_items=8, max_items=8)) as live:
        live.wait_ready()
        slot = live.app.state.registry.slots["tiny"]
        original, slot.model.text_rows = _slow_forward(slot, 0.5)
        slot.kinds.clear()
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: post_text(live, {"texts": ["a"] * 4}), range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 429 in statuses, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and "retry" in refused.json()["detail"]


def test_dead_worker_turns_health_and_requests_to_503(served_dir):
    with LiveServer(settings(served_dir)) as live:
        live.wait_ready()
        slot = live.app.state.registry.slots["tiny"]

        def crash(pixels):
            raise SystemExit("simulated crash of the inference thread")

        slot.model.image_rows = crash  # what the inference thread calls
        slot.kinds.clear()
        started = time.monotonic()
        assert_error(post_images(live, [("images", ("a.png", png()))]), 503, "crashed", "simulated crash")
        assert_error(post_text(live, {"texts": ["a"]}), 503, "not running")
        assert time.monotonic() - started < 10  # failed, not hung
        health = httpx.get(live.url + "/health")
        assert health.status_code == 503 and health.json()["models"]["tiny"]["status"] == "dead"
        assert 'latentspace_worker_up{model="tiny"} 0.0' in httpx.get(live.url + "/metrics").text


def test_health_is_503_while_loading(served_dir):
    from latentspace.serve.models import load_served_model

    release = threading.Event()

    def slow_loader(name, spec, partners):
        release.wait(30)
        return load_served_model(name, spec, partners)

    with LiveServer(settings(served_dir), loader=slow_loader) as live:
        health = httpx.get(live.url + "/health")
        assert health.status_code == 503 and health.json()["models"]["tiny"]["status"] == "loading"
        response = post_text(live, {"texts": ["a"]})
        assert_error(response, 503, "loading")
        assert response.headers["retry-after"] == "1"
        release.set()
        live.wait_ready()
        assert post_text(live, {"texts": ["a"]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path, served_dir):
    with LiveServer(settings(served_dir, models=[f"tiny={served_dir}", f"broken={tmp_path / 'missing'}"])) as live:
        deadline = time.monotonic() + 60
        while httpx.get(live.url + "/health").json()["models"]["broken"]["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = httpx.get(live.url + "/health")
        assert health.status_code == 503 and "not found" in health.json()["models"]["broken"]["error"]
        assert_error(post_text(live, {"texts": ["a"], "model": "broken"}), 503, "failed to load")
        assert post_text(live, {"texts": ["a"], "model": "tiny"}).status_code == 200


def test_serves_a_hugging_face_clip_directory(tmp_path):
    from latentspace.models.baselines import HFClipModel

    clip_dir = fakes.make_hf_clip(tmp_path / "clip", seed=0)
    # PyTorch runtimes: the check is the weights' mapping, to 1e-5 (an auto-chosen bf16 or int8
    # runtime answers within cosine 0.999, which tests/runtime checks).
    with LiveServer(
        ServeSettings(
            models=[f"clip=hf-clip:{clip_dir}"],
            image_runtime="torch",
            image_precision="fp32",
            text_runtime="torch",
            text_precision="fp32",
        )
    ) as live:
        live.wait_ready()
        image_bytes = [png("red circle"), png("blue square", 50)]
        got = httpx.post(live.url + "/v1/embedding/image", files=[("images", ("a.png", b)) for b in image_bytes]).json()
        clip = HFClipModel(clip_dir)
        want = clip.embed_images([Image.open(io.BytesIO(b)) for b in image_bytes])
        np.testing.assert_allclose(got["embeddings"], want.numpy(), atol=1e-5)
        text = httpx.post(
            live.url + "/v1/embedding/text", json={"texts": ["a red circle"], "task_type": "search_query"}
        ).json()
        np.testing.assert_allclose(text["embeddings"], clip.embed_texts(["a red circle"]).numpy(), atol=1e-5)


# --- remote image URLs ---------------------------------------------------------------------------------


def test_urls_fetched_when_enabled_and_hostile_ones_refused(served_dir):
    image = png("green square")
    with fakes.StaticHost({"/img.png": (200, {"Content-Type": "image/png"}, image)}) as host:
        host.routes["/to-loopback"] = (302, {"Location": f"http://127.0.0.1:{host.port}/img.png"}, b"")
        # `localhost` is allowed by name (an operator's internal image host), its address is not
        config = settings(served_dir, allow_urls=True, url_allowed_hosts=("localhost",), url_timeout_s=3)
        with LiveServer(config) as live:
            live.wait_ready()

            def post_urls(*urls):
                return httpx.post(live.url + "/v1/embedding/image", headers=AUTH, data={"urls": list(urls)}, timeout=30)

            ok = post_urls(f"http://localhost:{host.port}/img.png")
            assert ok.status_code == 200, ok.text
            np.testing.assert_allclose(
                ok.json()["embeddings"], embed.image([image], model=str(served_dir), **EXACT)["embeddings"], atol=1e-5
            )
            mixed = httpx.post(
                live.url + "/v1/embedding/image",
                headers=AUTH,
                files=[("images", ("a.png", png()))],
                data={"urls": [f"http://localhost:{host.port}/img.png"]},
            ).json()["embeddings"]
            assert len(mixed) == 2
            hostile = {
                "http://127.0.0.1/x.png": "loopback",
                "http://[::1]/x.png": "loopback",
                "http://169.254.169.254/latest/meta-data/": "169.254.169.254",
                "http://10.0.0.1/x.png": "private",
                "http://2130706433/x.png": "127.0.0.1",
                "file:///etc/passwd": "http",
                f"http://localhost:{host.port}/to-loopback": "127.0.0.1",
            }
            for url, phrase in hostile.items():
                assert_error(post_urls(f"http://localhost:{host.port}/img.png", url), 400, "url 1", phrase)
            # one fetch per request of url 0; the redirect to loopback was refused, never followed
            assert host.hits.count("/img.png") == 2 + len(hostile) and host.hits.count("/to-loopback") == 1


def test_cors_is_off_unless_configured(server, served_dir):
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    closed = httpx.options(server.url + "/v1/embedding/text", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    with LiveServer(settings(served_dir, cors_origins=("https://app.example",))) as live:
        opened = httpx.options(live.url + "/v1/embedding/text", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(live.url + "/v1/embedding/text", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- /v1/embeddings with images: texts and images in one request, in one space ------------------------


def data_url(image_bytes: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image_bytes).decode()}"


def jpeg(concept="blue circle") -> bytes:
    buffer = io.BytesIO()
    fakes.draw(concept).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def post_openai(server, body, headers=AUTH):
    return httpx.post(server.url + "/v1/embeddings", headers=headers, json=body, timeout=30)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_openai_endpoint_mixes_texts_images_and_urls_in_input_order(served_dir):
    picture, photo, fetched = png("red circle"), jpeg("blue circle"), png("green square")
    with fakes.StaticHost({"/pic.png": (200, {"Content-Type": "image/png"}, fetched)}) as host:
        # `localhost` is allowed by name, its address is not (as on the image route); a text-only
        # model beside the tiny one for the modality error
        config = settings(
            served_dir,
            models=[f"tiny={served_dir}", "minilm=builtin:all-MiniLM-L6-v2"],
            allow_urls=True,
            url_allowed_hosts=("localhost",),
            url_timeout_s=3,
        )
        with LiveServer(config) as live:
            live.wait_ready()
            loopback = image_part(f"http://127.0.0.1:{host.port}/pic.png")
            good = ["a red circle", image_part(data_url(picture)), image_part(data_url(photo, "image/jpeg"))]
            refused = post_openai(live, {"model": "tiny", "input": [*good, loopback]})
            assert_error(refused, 400, "input 3", "loopback")
            assert host.hits == []  # refused before any fetch

            by_name = image_part(f"http://localhost:{host.port}/pic.png")
            mixed = [*good, by_name, {"type": "text", "text": "a blue circle"}]
            answer = post_openai(live, {"model": "tiny", "input": mixed, "dimensions": 64})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            texts = embed.text(["a red circle", "a blue circle"], model=str(served_dir), dimensionality=64)
            images = embed.image([picture, photo, fetched], model=str(served_dir), dimensionality=64, **EXACT)
            want = [texts["embeddings"][0], *images["embeddings"], texts["embeddings"][1]]
            assert [d["index"] for d in body["data"]] == [0, 1, 2, 3, 4]
            np.testing.assert_allclose([d["embedding"] for d in body["data"]], want, atol=1e-5)
            tokens = texts["usage"]["prompt_tokens"]
            assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "images": 3}
            assert body["space"] == images["space"] and body["runtime"] == "torch-fp32"

            # infinity's "modality": plain strings are images, data URLs and URLs alike
            strings = [data_url(photo), f"http://localhost:{host.port}/pic.png"]
            plain = post_openai(live, {"model": "tiny", "input": strings, "modality": "image"}).json()
            np.testing.assert_allclose(
                [d["embedding"] for d in plain["data"]],
                embed.image([photo, fetched], model=str(served_dir), **EXACT)["embeddings"],
                atol=1e-5,
            )
            assert plain["usage"] == {"prompt_tokens": 0, "total_tokens": 0, "images": 2}
            as_images = post_openai(live, {"model": "tiny", "input": ["a red circle"], "modality": "image"})
            assert_error(as_images, 400, "input 0", "not an image URL")

            no_images = post_openai(live, {"model": "minilm", "input": ["fine", good[2]]})
            assert_error(no_images, 400, "input 1 is an image", "text only", "/v1/models")
            assert post_openai(live, {"model": "minilm", "input": ["fine"]}).status_code == 200


@pytest.mark.parametrize(
    "item, status, phrases",
    [
        (image_part(data_url(b"hello, I am a text file")), 400, ["input 1", "not a decodable image"]),
        (image_part(data_url(_claims_pixels(2000, 1000))), 413, ["input 1", "2000x1000 pixels exceeds"]),
        (image_part("data:image/png,%89PNG"), 400, ["input 1", "not base64"]),
        (image_part("data:image/png;base64,***"), 400, ["input 1", "not valid base64"]),
        (image_part(data_url(b"")), 400, ["input 1", "empty"]),
        (image_part("cat.png"), 400, ["input 1", "not an image URL"]),
        (image_part("https://example.com/a.png"), 400, ["input 1", "disabled", "--allow-urls"]),
        (image_part(""), 422, ["input 1", "non-empty URL"]),
        ({"type": "image_url"}, 422, ["input 1", '"image_url"']),
        ({"type": "text"}, 422, ["input 1", '"text"']),
        ({}, 422, ["input 1", '"type"']),
        ({"type": "audio", "audio": "x"}, 422, ["input 1", "unknown part type 'audio'"]),
        (42, 422, ["input 1", "a number is not an input"]),
        ({"type": "text", "text": "cut \udcff here"}, 422, ["text 1 is not valid Unicode"]),
    ],
)
def test_bad_openai_input_is_a_4xx_naming_it_and_the_server_keeps_serving(server, item, status, phrases):
    response = httpx.post(
        server.url + "/v1/embeddings",
        headers={**AUTH, "Content-Type": "application/json"},
        # json.dumps writes a lone surrogate as an escape; httpx's json= would refuse to encode it
        content=json.dumps({"input": ["a good text", item]}).encode(),
        timeout=30,
    )
    assert_error(response, status, *phrases)
    assert post_openai(server, {"input": ["a good text", image_part(data_url(png()))]}).status_code == 200


def test_openai_image_formats_and_limits(server):
    tiff = io.BytesIO()
    fakes.draw("red circle").convert("RGB").save(tiff, format="TIFF")
    assert_error(post_openai(server, {"input": [image_part(data_url(tiff.getvalue()))]}), 415, "input 0", "TIFF")
    # a data URL larger than the body cap is refused while the body is read
    huge = data_url(b"\x89PNG" + b"\0" * (2 * 2**20))
    assert_error(post_openai(server, {"input": [huge], "modality": "image"}), 413, "exceeds the limit")
    assert_error(post_openai(server, {"input": [data_url(png())] * 9, "modality": "image"}), 413, "limit is 8")
    assert_error(post_openai(server, {"input": []}), 422, "input is empty")
    assert_error(post_openai(server, {"input": [[1, 2, 3]]}), 422, "input 0", "a list is not an input")
    # a plain string is a text whatever it looks like: never fetched, never decoded
    as_text = post_openai(server, {"input": ["https://example.com/a.png", data_url(png())]})
    assert as_text.status_code == 200 and as_text.json()["usage"]["images"] == 0
    assert post_openai(server, {"input": ["still serving"]}).status_code == 200


def test_the_official_openai_client_embeds_images_unchanged(server, served_dir):
    openai = pytest.importorskip("openai", reason="openai is in the dev extra")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    picture, photo = png("red circle"), jpeg("blue circle")
    want_images = embed.image([picture, photo], model=str(served_dir), **EXACT)["embeddings"]
    want_text = embed.text(["a red circle"], model=str(served_dir))["embeddings"]
    plain = client.embeddings.create(
        model="tiny", input=[data_url(picture), data_url(photo, "image/jpeg")], extra_body={"modality": "image"}
    )
    np.testing.assert_allclose([d.embedding for d in plain.data], want_images, atol=1e-5)
    typed = client.embeddings.create(
        model="tiny",
        input=["a red circle"],
        # typed parts go through extra_body: the client's own `input` is typed as texts and token ids
        extra_body={"input": ["a red circle", {"type": "image_url", "image_url": {"url": data_url(picture)}}]},
    )
    np.testing.assert_allclose([d.embedding for d in typed.data], [want_text[0], want_images[0]], atol=1e-5)
    assert typed.usage.prompt_tokens > 0 and typed.model == "tiny"
