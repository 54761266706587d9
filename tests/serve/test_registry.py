"""The served models (serve/registry.py): loaded on a background thread while the server already
answers, each with its own inference worker; what /health and every request say while a model
loads, after it failed, and once its worker died.

The loader is the registry's seam: these tests hand it one that returns a small deterministic
model at once, or blocks until told to go on, or fails, so every state can be seen on purpose.
The workers, threads, metrics and HTTP app are the real ones."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from latentspace.serve.app import create_app
from latentspace.serve.errors import ApiError
from latentspace.serve.metrics import ServerMetrics
from latentspace.serve.models import ServedModel
from latentspace.serve.registry import ModelRegistry
from latentspace.serve.settings import ServeSettings
from latentspace.space import SpaceIdentity

SPACE = SpaceIdentity("test-space", "0123456789abcdef", 3)


class SumModel:
    """The parts of a model the registry and its batch kinds use. An image (a tensor) embeds as
    its per-channel sums, a text (token ids) as [length, sum, 1]."""

    kind = "test-sum"
    dim = 3
    image_batch_size = 4

    def __init__(self, identity: SpaceIdentity = SPACE, modalities=("text", "image")) -> None:
        self.identity, self.modalities = identity, modalities
        self.space = str(identity)
        self.choices: dict = {}  # no runtime chosen: nothing to log

    def describe(self) -> dict:
        return {"kind": self.kind, "space": self.space, "dim": self.dim, "modalities": list(self.modalities)}

    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.sum(dim=(2, 3))

    def text_rows_by_length(self, ids: list[list[int]]) -> torch.Tensor:
        return torch.tensor([[len(row), sum(row), 1] for row in ids], dtype=torch.float32)


class Loader:
    """Records what it was asked to load (name, spec, the names of the models passed as partners);
    `hold[name]` makes that load wait for the event, `fail[name]` makes it raise; `identities`
    and `modalities` give a model another space, or fewer sides, than SPACE and text+image."""

    def __init__(self, *, hold=None, fail=None, identities=None, modalities=None) -> None:
        self.calls: list[tuple[str, str, list[str]]] = []
        self.hold: dict[str, threading.Event] = hold or {}
        self.fail: dict[str, Exception] = fail or {}
        self.identities: dict[str, SpaceIdentity] = identities or {}
        self.modalities: dict[str, tuple[str, ...]] = modalities or {}
        self.names: dict[int, str] = {}

    def __call__(self, name, spec, partners) -> ServedModel:
        self.calls.append((name, spec, [self.names[id(p)] for p in partners]))
        if name in self.hold:
            assert self.hold[name].wait(30), "the test never let the load finish"
        if name in self.fail:
            raise self.fail[name]
        model = SumModel(self.identities.get(name, SPACE), self.modalities.get(name, ("text", "image")))
        self.names[id(model)] = name
        return ServedModel(name, spec, model)


def settings(*models: str, **overrides) -> ServeSettings:
    return ServeSettings(models=list(models), max_items=8, max_queue_items=16, retry_after_s=7, **overrides)


@pytest.fixture
def registries():
    """Makes registries and stops their workers after the test (threads are not left running)."""
    made: list[ModelRegistry] = []

    def make(*models: str, loader: Loader, **overrides) -> ModelRegistry:
        registry = ModelRegistry(settings(*models, **overrides), ServerMetrics(), loader)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.stop()


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def worker_up(registry: ModelRegistry, name: str) -> float:
    return registry.metrics.registry.get_sample_value("latentspace_worker_up", {"model": name})


def api_error(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


# --- loading --------------------------------------------------------------------------------------


def test_a_model_loads_in_the_background_while_requests_get_503(registries):
    go = threading.Event()
    loader = Loader(hold={"a": go})
    registry = registries("a=spec-a", loader=loader)
    done = []
    registry.after_load.append(done.append)
    registry.start()  # returns at once: the load waits for `go`
    wait_until(lambda: loader.calls)

    assert registry.statuses() == {"a": {"status": "loading"}} and not registry.healthy
    error = api_error(lambda: registry.get("a"))
    assert error.status == 503 and "still loading" in error.message
    assert error.headers == {"Retry-After": "7"}
    assert done == []

    go.set()
    wait_until(lambda: registry.healthy)
    assert registry.statuses() == {"a": {"status": "ready"}}
    slot = registry.get("a")
    assert slot.worker.alive and slot.model.space == str(SPACE)
    assert worker_up(registry, "a") == 1
    wait_until(lambda: done)
    assert done == [registry]  # the hooks ran once, after the load, with the registry


def test_a_model_that_fails_to_load_is_reported_and_the_others_serve(registries):
    loader = Loader(fail={"broken": OSError("no weights at spec-b")})
    registry = registries("ok=spec-a", "broken=spec-b", loader=loader)
    hooks = []
    registry.after_load.append(hooks.append)
    registry.load_now()

    assert registry.statuses() == {
        "ok": {"status": "ready"},
        "broken": {"status": "failed", "error": "OSError: no weights at spec-b"},
    }
    assert not registry.healthy and hooks == [registry]  # the hooks run even when a load failed
    error = api_error(lambda: registry.get("broken"))
    # a failed load does not heal by retrying: 503 without Retry-After
    assert error.status == 503 and error.message == "model 'broken' failed to load: OSError: no weights at spec-b"
    assert error.headers == {}
    assert registry.get("ok").worker.alive
    assert registry.slots["broken"].worker is None and worker_up(registry, "broken") is None


def test_image_models_that_pair_with_a_loaded_text_model_load_last(registries, tmp_path):
    """A Nomic vision model takes its text side from a model loaded before it, so it loads after
    the others whatever the order it was named in, and is handed the models loaded so far."""
    vision = tmp_path / "nomic-vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"architectures": ["NomicVisionModel"]}))
    loader = Loader()
    registry = registries(f"vision={vision}", "text=spec-t", "other=spec-o", loader=loader)
    registry.load_now()
    assert loader.calls == [
        ("text", "spec-t", []),
        ("other", "spec-o", ["text"]),
        ("vision", str(vision), ["text", "other"]),
    ]
    assert list(registry.slots) == ["vision", "text", "other"]  # listed as named, not as loaded


# --- requests -------------------------------------------------------------------------------------


def test_which_model_a_request_gets(registries):
    registry = registries("a=spec-a", "b=spec-b", loader=Loader())
    registry.load_now()
    assert registry.get("b").name == "b"
    error = api_error(lambda: registry.get(None))
    assert (error.status, error.message) == (422, "say which model: this server has a, b")
    assert api_error(lambda: registry.get("")).status == 422
    error = api_error(lambda: registry.get("c"))
    assert error.status == 404 and "unknown model 'c'; this server has a, b" in error.message

    single = registries("only=spec", loader=Loader())
    single.load_now()
    assert single.get(None).name == "only" and single.get("").name == "only"


def test_two_models_of_one_name_are_refused(registries):
    with pytest.raises(ValueError, match="two models are named 'x'"):
        registries("x=spec-a", "x=spec-b", loader=Loader())


def test_a_dead_worker_turns_health_and_requests_to_503(registries):
    registry = registries("a=spec-a", loader=Loader())
    registry.load_now()
    slot = registry.get("a")
    slot.worker.stop()
    assert not slot.worker.alive
    assert registry.statuses() == {"a": {"status": "dead", "error": "stopped"}} and not registry.healthy
    assert worker_up(registry, "a") == 0  # statuses() refreshes the gauge
    error = api_error(lambda: registry.get("a"))
    assert error.status == 503 and "is not running (stopped); the server needs a restart" in error.message
    assert error.headers == {"Retry-After": "7"}


def test_batch_kinds_are_made_once_and_run_on_the_worker(registries):
    registry = registries("a=spec-a", loader=Loader(), max_batch_images=2)
    registry.load_now()
    slot = registry.get("a")
    images = registry.image_kind(slot)
    assert registry.image_kind(slot) is images and images.budget == 2  # the setting caps the model's 4
    texts = registry.text_kind(slot)
    assert registry.text_kind(slot) is texts and texts.budget == registry.settings.max_batch_tokens

    pixels = [torch.full((3, 2, 2), float(i)) for i in range(5)]
    rows = asyncio.run(slot.worker.submit(images, pixels))
    np.testing.assert_array_equal(rows.numpy(), [[4 * i] * 3 for i in range(5)])
    rows = asyncio.run(slot.worker.submit(texts, [[1, 2, 3], [5]], [3, 1]))
    np.testing.assert_array_equal(rows.numpy(), [[3, 6, 1], [1, 5, 1]])
    # the batches were observed under the model's name: 5 images in batches of at most 2
    assert (
        registry.metrics.registry.get_sample_value("latentspace_items_embedded_total", {"model": "a", "kind": "image"})
        == 5
    )


class Manifest:
    """What query_model_for reads of a collection's manifest."""

    def __init__(self, model: str, identity: SpaceIdentity = SPACE) -> None:
        self.model, self.identity = model, identity


def test_a_collection_is_queried_with_a_served_model_of_its_space(registries):
    other = SpaceIdentity("other-space", "fedcba9876543210", 3)
    identities = {"elsewhere": other, "wrong": other}
    loader = Loader(identities=identities, modalities={"text-only": ("text",)})
    registry = registries("elsewhere=spec-e", "text-only=spec-t", "here=spec-h", loader=loader)
    registry.load_now()
    assert registry.query_model_for(Manifest("spec-x"), "photos-model") == "here"
    assert len(loader.calls) == 3  # nothing loaded for it

    # Served models of other spaces, or without an image side, cannot embed an image query for
    # it: the manifest's model is loaded beside them.
    registry = registries("elsewhere=spec-e", "text-only=spec-t", loader=loader)
    registry.load_now()
    assert registry.query_model_for(Manifest("spec-x"), "photos-model") == "photos-model"
    assert loader.calls[-1] == ("photos-model", "spec-x", ["elsewhere", "text-only"])
    assert registry.get("photos-model").worker.alive and registry.healthy

    with pytest.raises(ValueError, match="now loads in space other-space"):
        registry.query_model_for(Manifest("spec-y", identity=SpaceIdentity("third", "0" * 16, 3)), "wrong")
    assert "wrong" not in registry.slots


# --- /health over HTTP ----------------------------------------------------------------------------


def test_health_says_loading_then_ok():
    go = threading.Event()
    loader = Loader(hold={"a": go})
    app = create_app(settings("a=spec-a"), loader=loader)
    with TestClient(app) as client:  # the lifespan starts the background load
        wait_until(lambda: loader.calls)
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.headers["retry-after"] == "7"
        assert loading.json() == {"status": "unavailable", "models": {"a": {"status": "loading"}}}
        listed = client.get("/v1/models").json()["data"]
        assert listed == [{"id": "a", "object": "model", "kind": None, "status": "loading"}]

        go.set()
        wait_until(lambda: client.get("/health").status_code == 200)
        assert client.get("/health").json() == {"status": "ok", "models": {"a": {"status": "ready"}}}
        ready = client.get("/v1/models").json()["data"][0]
        assert ready["status"] == "ready" and ready["kind"] == "test-sum" and ready["space"] == str(SPACE)
        worker = app.state.registry.slots["a"].worker
    assert not worker.alive  # the end of the lifespan stopped the worker


def test_health_names_a_model_that_failed_to_load():
    loader = Loader(fail={"b": ValueError("bad spec")})
    app = create_app(settings("a=spec-a", "b=spec-b"), loader=loader)
    with TestClient(app) as client:
        wait_until(lambda: app.state.registry.slots["b"].state != "loading")
        wait_until(lambda: app.state.registry.slots["a"].state != "loading")
        failed = client.get("/health")
        assert failed.status_code == 503 and failed.json() == {
            "status": "unavailable",
            "models": {"a": {"status": "ready"}, "b": {"status": "failed", "error": "ValueError: bad spec"}},
        }
