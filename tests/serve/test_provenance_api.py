"""Provenance on the server: the reference agreement of every served model with PyTorch fp32 in
/v1/models and /metrics, a drifting runtime made visible, and a collection searched with a served
model of another space refused."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
import torch

from latentspace.collections import BuildSettings, build_collection
from latentspace.runtime import EXACT, Choice, ModelOnRuntimes, on_runtimes
from latentspace.runtime.agreement import reference_agreement, reference_images, reference_texts
from latentspace.serve.metrics import ServerMetrics
from latentspace.serve.models import ServedModel
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

KEY = "provenance-test-key-1234"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER_SPACE = "0123456789abcdef"


def loader(name, spec, partners):
    model = fakes.colour_embedder(OTHER_SPACE if spec == "other" else "c010c010c010c010")
    return ServedModel(name, spec, on_runtimes(model, image=EXACT, text=EXACT))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    library = tmp_path_factory.mktemp("library")
    for concept in fakes.CONCEPTS:
        fakes.draw(concept, size=48).save(library / f"{concept.replace(' ', '_')}.png")
    directory = tmp_path_factory.mktemp("collections") / "drawings"
    build_collection(
        directory,
        fakes.colour_embedder(),
        library,
        settings=BuildSettings(image_runtime="torch", image_precision="fp32"),
    )
    settings = ServeSettings(
        models=["colour", "other"], collections=[f"drawings={directory}"], api_keys=(KEY,), decode_threads=1
    )
    with LiveServer(settings, loader=loader) as live:
        yield live.wait_ready()


def agreement_gauges(exposition: str) -> dict[tuple[str, str, str, str], float]:
    """(model, modality, runtime, precision) -> value of latentspace_reference_min_cosine."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(exposition):
        if family.name == "latentspace_reference_min_cosine":
            for sample in family.samples:
                labels = sample.labels
                out[(labels["model"], labels["modality"], labels["runtime"], labels["precision"])] = sample.value
    return out


def test_the_reference_set_is_packaged():
    assert len(reference_images()) >= 4 and len(reference_texts()) >= 4
    assert all(data.startswith(b"\x89PNG") for data in reference_images())


def served_models(server, timeout: float = 60.0) -> dict[str, dict]:
    """/v1/models by id, once every model's reference agreement is in (it is measured right after
    the models are ready, so /health may say 200 a moment before)."""
    deadline = time.monotonic() + timeout
    while True:
        models = {m["id"]: m for m in httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"]}
        if all("reference_agreement" in m for m in models.values()):
            return models
        assert time.monotonic() < deadline, models
        time.sleep(0.05)


def test_models_and_metrics_carry_the_reference_agreement(server):
    models = served_models(server)
    for name in ("colour", "other"):
        agreement = models[name]["reference_agreement"]
        assert set(agreement) == {"text", "image"}
        for modality, items in (("image", len(reference_images())), ("text", len(reference_texts()))):
            # PyTorch fp32 itself: 1.0 by construction, and said so
            assert agreement[modality] == {
                "runtime": "torch",
                "precision": "fp32",
                "min_cosine": 1.0,
                "items": items,
                "reference": True,
            }
    gauges = agreement_gauges(httpx.get(server.url + "/metrics").text)
    assert gauges == {
        (name, modality, "torch", "fp32"): 1.0 for name in ("colour", "other") for modality in ("image", "text")
    }


def test_a_drifting_runtime_shows_in_the_agreement(caplog):
    """A forward that strays from PyTorch fp32 (here: rows nudged off) is reported with its lowest
    cosine, below the bound, and logged as a warning by the registry."""
    model = fakes.colour_embedder()
    drift = torch.tensor([0.0, 0.0, 0.3, 0.0])
    drifting = ModelOnRuntimes(
        model,
        {"image": Choice("openvino", "int8", "test"), "text": Choice("torch", "fp32", "test")},
        image=lambda pixels: model.image_rows(pixels) + drift,
        text=None,
    )
    agreement = reference_agreement(drifting)
    image, text = agreement["image"], agreement["text"]
    assert (image.runtime, image.precision, image.reference) == ("openvino", "int8", False)
    assert image.min_cosine is not None and image.min_cosine < 0.99
    assert text.reference and text.min_cosine == 1.0

    from latentspace.serve.registry import ModelRegistry

    metrics = ServerMetrics()
    registry = ModelRegistry(
        ServeSettings(models=["drift=x"]), metrics, lambda name, spec, partners: ServedModel(name, spec, drifting)
    )
    with caplog.at_level(logging.INFO, logger="latentspace.serve.registry"):
        registry.load_now()
        assert not registry.slots["drift"].served.agreement  # checked after the models are ready
        registry.check_references()
    try:
        described = registry.slots["drift"].served.describe()["reference_agreement"]
        assert described["image"]["min_cosine"] == image.min_cosine and not described["image"]["reference"]
        assert any(
            r.levelno == logging.WARNING
            and "drift image on openvino-int8" in r.getMessage()
            and "below 0.999" in r.getMessage()
            for r in caplog.records
        )
        assert agreement_gauges(metrics.render().decode()) == {
            ("drift", "image", "openvino", "int8"): image.min_cosine,
            ("drift", "text", "torch", "fp32"): 1.0,
        }
    finally:
        registry.stop()


def test_the_collection_list_carries_provenance(server):
    (drawings,) = httpx.get(server.url + "/v1/collections", headers=AUTH).json()["data"]
    made_by = drawings["provenance"]["made_by"]
    assert [(g["runtime"], g["precision"], g["rows"]) for g in made_by] == [("torch", "fp32", 12)]
    assert drawings["provenance"]["query_prefix"] == ""


def test_a_served_model_of_another_space_is_refused_for_a_collection(server):
    url = f"{server.url}/v1/collections/drawings/search"
    assert httpx.post(url, json={"text": "red", "k": 2}, headers=AUTH).status_code == 200
    assert httpx.post(url, json={"text": "red", "k": 2, "model": "colour"}, headers=AUTH).status_code == 200
    for body in ({"text": "red", "model": "other"}, {"terms": [{"text": "red"}, {"text": "blue"}], "model": "other"}):
        refused = httpx.post(url, json=body, headers=AUTH)
        assert refused.status_code == 400, refused.text
        detail = refused.json()["detail"]
        assert "served model 'other' (other) is in latent space colour-space-4d@0123456789abcdef" in detail
        assert "holds vectors of space colour-space-4d@c010c010c010c010 (built with model 'colour')" in detail
    image = fakes.png_bytes(fakes.draw("red circle", size=32))
    refused = httpx.post(
        url + "/image", headers=AUTH, files={"image": ("q.png", image, "image/png")}, data={"model": "other"}
    )
    assert refused.status_code == 400 and "latent space colour-space-4d@0123456789abcdef" in refused.json()["detail"]
    fine = httpx.post(url + "/image", headers=AUTH, files={"image": ("q.png", image, "image/png")})
    assert fine.status_code == 200 and fine.json()["results"]
    unknown = httpx.post(url, json={"text": "red", "model": "nope"}, headers=AUTH)
    assert unknown.status_code == 404
