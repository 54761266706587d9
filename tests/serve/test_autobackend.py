"""`--image-backend auto`: measured, never below the cosine bound, cached, the same in every worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import httpx
import pytest
import torch

from latentspace.models.load import load
from latentspace.serve.backends import (
    CANDIDATES,
    BackendUnavailable,
    accelerate,
    calibrate,
    choose,
    cpu_info,
    probe_images,
)
from latentspace.serve.settings import ServeSettings

from fakes import LiveServer


@pytest.fixture(scope="module")
def tiny(served_dir):
    model = load(str(served_dir))
    return model, probe_images(model.preprocess_image, n=4)


def test_every_installed_candidate_is_measured_against_pytorch_fp32(tiny):
    model, probe = tiny
    choice = calibrate(model.image_module, probe)
    assert (choice.backend, choice.precision) in CANDIDATES
    by_name = {m.name: m for m in choice.measurements}
    assert set(by_name) == {f"{b}-{p}" for b, p in CANDIDATES}
    assert by_name["torch-fp32"].min_cosine == 1.0 and by_name["torch-fp32"].items_per_s > 0
    chosen = by_name[choice.name]
    assert chosen.skipped is None and chosen.min_cosine >= 0.999
    assert chosen.items_per_s == max(m.items_per_s for m in choice.measurements if m.skipped is None)
    if cpu_info().native_bf16:  # measured (or failed for a reason of its own), never skipped for the CPU
        assert "no native bf16" not in (by_name["openvino-bf16"].skipped or "")
    else:
        assert "no native bf16" in by_name["openvino-bf16"].skipped
    assert cpu_info().model in choice.reason


AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_the_avx2_only_path_runs_on_any_cpu_under_the_isa_cap(served_dir):
    """An AVX2-only machine, emulated on this one (an AVX-512 or AMX machine runs the other
    path in the test above): PyTorch's kernels and OpenVINO's obey the cap, and so does `auto`,
    which then measures no bf16 and still chooses a runtime within the bound."""
    script = textwrap.dedent(f"""
        import json, torch
        from latentspace.models.load import load
        from latentspace.serve.backends import calibrate, cpu_info, probe_images
        model = load({str(served_dir)!r})
        choice = calibrate(model.image_module, probe_images(model.preprocess_image, n=4))
        print(json.dumps({{
            "aten": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_info().native_bf16,
            "flags": sorted(f for f in cpu_info().flags if f.startswith(("avx512", "amx"))),
            "bf16": next(m.skipped for m in choice.measurements if m.name == "openvino-bf16"),
            "chosen": choice.name,
            "cosine": next(m.min_cosine for m in choice.measurements if m.name == choice.name),
        }}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env={**os.environ, **AVX2_ONLY}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["aten"] == "AVX2" and not seen["native_bf16"] and seen["flags"] == []
    assert "no native bf16" in seen["bf16"]
    assert seen["cosine"] >= 0.999


def test_a_fast_but_wrong_backend_is_never_chosen_and_a_missing_one_is_skipped(tiny, caplog):
    model, probe = tiny

    def build(module, example, backend, precision):
        if backend == "openvino":
            raise BackendUnavailable("openvino is not installed (simulated)")
        if (backend, precision) == ("onnxruntime", "int8"):
            return lambda pixels: torch.randn(len(pixels), 384)  # instant, and wrong
        return accelerate(module, example, backend, precision)

    with caplog.at_level(logging.INFO):
        choice = calibrate(
            model.image_module,
            probe,
            build=build,
            candidates=[("torch", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8")],
        )
    by_name = {m.name: m for m in choice.measurements}
    assert choice.name == "torch-fp32"
    assert "below 0.999" in by_name["onnxruntime-int8"].skipped and by_name["onnxruntime-int8"].items_per_s > 0
    assert by_name["openvino-fp32"].skipped.startswith("runtime missing")
    assert "image backend openvino-fp32 skipped" in caplog.text


def test_the_choice_is_cached_and_deterministic(tiny, tmp_path, monkeypatch):
    model, probe = tiny
    from latentspace.serve import backends

    calls = []
    real = backends.calibrate
    monkeypatch.setattr(backends, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = choose(model.image_module, probe, model_fingerprint="tiny", cache_dir=tmp_path)
    second = choose(model.image_module, probe, model_fingerprint="tiny", cache_dir=tmp_path)
    assert len(calls) == 1 and not first.cached and second.cached
    assert (second.name, second.reason) == (first.name, first.reason)
    other = choose(model.image_module, probe, model_fingerprint="another model", cache_dir=tmp_path)
    assert len(calls) == 2 and not other.cached  # the key covers the model


def test_worker_processes_share_one_calibration(served_dir, tmp_path):
    """Two processes starting at once: one measures, the other waits and takes its choice."""
    script = textwrap.dedent(f"""
        import json, sys
        from latentspace.models.load import load
        from latentspace.serve.backends import choose, probe_images
        model = load({str(served_dir)!r})
        choice = choose(model.image_module, probe_images(model.preprocess_image, n=4),
                        model_fingerprint="shared", cache_dir=__import__("pathlib").Path({str(tmp_path)!r}))
        print(json.dumps({{"name": choice.name, "cached": choice.cached}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert answers[0]["name"] == answers[1]["name"]
    assert sorted(a["cached"] for a in answers) == [False, True]


def test_the_server_says_which_backend_runs_and_why(served_dir):
    with LiveServer(ServeSettings(models=[f"tiny={served_dir}"], decode_threads=1)) as server:
        server.wait_ready()
        entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert tuple(entry["image_backend"].split("-")) in CANDIDATES
    assert "fastest of" in entry["image_backend_reason"] and "cosine >= 0.999" in entry["image_backend_reason"]
    with LiveServer(ServeSettings(models=[f"tiny={served_dir}"], image_backend="torch", decode_threads=1)) as server:
        server.wait_ready()
        entry = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert entry["image_backend"] == "torch-fp32" and entry["image_backend_reason"] == "chosen with --image-backend"


def test_a_runtime_that_fails_falls_back_to_pytorch(served_dir, caplog):
    """A runtime that cannot build, or breaks on an input calibration did not show, costs speed,
    not answers: PyTorch serves from then on, and the choice says so."""
    from latentspace.serve.backends import Choice
    from latentspace.serve.models import _guarded, image_forward, text_forward

    def broken(items):
        raise RuntimeError("a graph that baked in one input shape")

    choice = Choice("onnxruntime", "fp32", "measured")
    run = _guarded(broken, lambda items: items * 2, choice, "m image")
    with caplog.at_level(logging.ERROR):
        assert run(torch.ones(2)).tolist() == [2.0, 2.0]
    assert choice.name == "torch-fp32" and "fell back" in choice.reason and "serving with PyTorch" in caplog.text

    model = load(str(served_dir))
    cannot = Choice("openvino", "int8", "test")  # not a runtime that exists
    assert image_forward(model, cannot) == model.image_rows and cannot.name == "torch-fp32"
    ok = Choice("onnxruntime", "fp32", "test")
    pixels = probe_images(model.preprocess_image, n=2)
    torch.testing.assert_close(image_forward(model, ok)(pixels), model.image_rows(pixels), atol=1e-4, rtol=0)
    ids = model.tokenize(["a red circle", "two words"], "search_query")
    torch.testing.assert_close(
        text_forward(model, Choice("onnxruntime", "fp32", "t"))(ids), model.text_rows(ids), atol=1e-5, rtol=0
    )
