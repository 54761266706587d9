"""runtime.choice: `auto` is measured, never below the cosine bound, cached, the same in every
process; the CPU paths it depends on are exercised on any CPU where a cap allows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from latentspace.models.load import load
from latentspace.runtime import (
    CANDIDATES,
    RuntimeSettings,
    RuntimeUnavailable,
    build_forward,
    calibrate,
    choose,
    cpu_info,
    probe_images,
)
from latentspace.runtime import choice as choice_module


@pytest.fixture(scope="module")
def tiny(served_dir):
    model = load(str(served_dir))
    return model, probe_images(model.preprocess_image, n=4)


def test_every_installed_candidate_is_measured_against_pytorch_fp32(tiny):
    model, probe = tiny
    choice = calibrate(model.image_module, probe)
    assert (choice.runtime, choice.precision) in CANDIDATES
    by_name = {m.name: m for m in choice.measurements}
    assert set(by_name) == {f"{r}-{p}" for r, p in CANDIDATES}
    assert by_name["torch-fp32"].min_cosine == 1.0 and by_name["torch-fp32"].items_per_s > 0
    chosen = by_name[choice.name]
    assert chosen.skipped is None and chosen.min_cosine >= 0.999
    assert chosen.items_per_s == max(m.items_per_s for m in choice.measurements if m.skipped is None)
    if cpu_info().native_bf16:  # measured (or failed for a reason of its own), never skipped for the CPU
        assert "no native bf16" not in (by_name["openvino-bf16"].skipped or "")
    else:
        assert "no native bf16" in by_name["openvino-bf16"].skipped
    assert cpu_info().model in choice.reason
    assert choice.batch in (4, 8, 16, 32) and "batches of" in choice.reason


def test_a_fast_but_wrong_runtime_is_never_chosen_and_a_missing_one_is_skipped(tiny, caplog):
    model, probe = tiny

    def build(module, example, runtime, precision):
        if runtime == "openvino":
            raise RuntimeUnavailable("openvino is not installed (simulated)")
        if (runtime, precision) == ("onnxruntime", "int8"):
            return lambda pixels: torch.randn(len(pixels), 384)  # instant, and wrong
        return build_forward(module, example, runtime, precision)

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
    assert "runtime openvino-fp32 skipped" in caplog.text


def test_a_request_narrows_the_candidates_and_pytorch_is_the_fallback(tiny):
    model, probe = tiny
    fp32 = RuntimeSettings(precision="fp32")
    assert fp32.candidates() == [("torch", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp32")]
    choice = calibrate(model.image_module, probe, candidates=fp32.candidates(), batch_sizes=())
    assert choice.precision == "fp32" and choice.batch is None

    def nothing_builds(module, example, runtime, precision):
        raise RuntimeUnavailable("simulated")

    only_openvino = RuntimeSettings(runtime="openvino")
    fallback = calibrate(
        model.image_module, probe, candidates=only_openvino.candidates(), build=nothing_builds, batch_sizes=()
    )
    assert fallback.name == "torch-fp32" and fallback.reason.startswith("fell back to PyTorch fp32")
    with pytest.raises(ValueError, match="no torch runtime at bf16"):
        RuntimeSettings(runtime="torch", precision="bf16")


def test_the_choice_is_cached_and_deterministic(tiny, tmp_path, monkeypatch):
    model, probe = tiny
    calls = []
    real = choice_module.calibrate
    monkeypatch.setattr(choice_module, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = choose(model.image_module, probe, model_fingerprint="tiny", cache_dir=tmp_path)
    second = choose(model.image_module, probe, model_fingerprint="tiny", cache_dir=tmp_path)
    assert len(calls) == 1 and not first.cached and second.cached
    assert (second.name, second.reason, second.batch) == (first.name, first.reason, first.batch)
    other = choose(model.image_module, probe, model_fingerprint="another model", cache_dir=tmp_path)
    assert len(calls) == 2 and not other.cached  # the key covers the model
    fp32 = choose(
        model.image_module,
        probe,
        model_fingerprint="tiny",
        settings=RuntimeSettings(precision="fp32"),
        cache_dir=tmp_path,
    )
    assert len(calls) == 3 and not fp32.cached  # and the request


def test_worker_processes_share_one_calibration(served_dir, tmp_path):
    """Two processes starting at once: one measures, the other waits and takes its choice."""
    script = textwrap.dedent(f"""
        import json, pathlib
        from latentspace.models.load import load
        from latentspace.runtime import choose, probe_images
        model = load({str(served_dir)!r})
        choice = choose(model.image_module, probe_images(model.preprocess_image, n=4),
                        model_fingerprint="shared", cache_dir=pathlib.Path({str(tmp_path)!r}))
        print(json.dumps({{"name": choice.name, "cached": choice.cached}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert answers[0]["name"] == answers[1]["name"]
    assert sorted(a["cached"] for a in answers) == [False, True]


AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_the_avx2_only_path_runs_on_any_cpu_under_the_isa_cap(served_dir):
    """An AVX2-only machine, emulated on this one (an AVX-512 or AMX machine runs the other
    path in the test above): PyTorch's kernels and OpenVINO's obey the cap, and so does `auto`,
    which then measures no bf16 and still chooses a runtime within the bound."""
    script = textwrap.dedent(f"""
        import json, torch
        from latentspace.models.load import load
        from latentspace.runtime import calibrate, cpu_info, probe_images
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


def test_measurements_read_as_a_line_whatever_happened_to_each():
    from latentspace.runtime import Choice, Measurement

    choice = Choice(
        "torch",
        "fp32",
        "measured",
        [
            Measurement("torch", "fp32", 10.0, 1.0),
            Measurement("openvino", "bf16", skipped="no native bf16 on this CPU"),
            Measurement("onnxruntime", "fp32", 12.0, None, skipped="failed: RuntimeError: a kept shape"),
            Measurement("onnxruntime", "int8", 30.0, 0.5, skipped="cosine 0.5 below 0.999"),
        ],
    )
    line = choice.describe_measurements()
    assert "torch-fp32: 10.0/s, cosine 1.00000" in line and "openvino-bf16: no native bf16" in line
    assert "onnxruntime-fp32: failed: RuntimeError" in line and "onnxruntime-int8: 30.0/s, cosine 0.50000 (" in line
