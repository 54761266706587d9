"""`latentspace serve` as users start it: a real process, keys from a file, several workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from latentspace import embed
from latentspace.serve.settings import read_api_keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "latentspace", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_serve_command_with_key_file_and_two_workers(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nfirst-key-123456\n\nsecond-key-123456\n")
    port = _free_port()
    scratch = tmp_path / "tmp"  # where the server's shared metrics directory goes
    scratch.mkdir()
    proc = _serve(
        "--model",
        "minilm=builtin:all-MiniLM-L6-v2",
        "--port",
        str(port),
        "--api-key-file",
        str(keys),
        "--workers",
        "2",
        "--text-runtime",  # answers are compared with local mode's to 1e-5: PyTorch fp32, not auto's pick
        "torch",
        "--text-precision",
        "fp32",
        "--log-level",
        "warning",
        env={"TMPDIR": str(scratch)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.3)
        for key in ("first-key-123456", "second-key-123456"):
            for _ in range(4):  # spread over both worker processes
                out = httpx.post(
                    url + "/v1/embedding/text",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"texts": ["hello there"], "model": "minilm"},
                    timeout=30,
                ).json()
                want = embed.text(["hello there"], model="builtin:all-MiniLM-L6-v2")["embeddings"]
                np.testing.assert_allclose(out["embeddings"], want, atol=1e-5)
        assert httpx.post(url + "/v1/embedding/text", json={"texts": ["x"]}).status_code == 401
        # Whichever process answers /metrics, it counts what both served.
        for _ in range(4):
            text = httpx.get(url + "/metrics", timeout=10).text
            route = "/v1/embedding/text"
            assert _sample(text, "latentspace_requests_total", route=route, status="200") == 8
            assert _sample(text, "latentspace_requests_total", route=route, status="401") == 1
            assert _sample(text, "latentspace_items_embedded_total", model="minilm", kind="text") == 8
        assert [p for p in scratch.iterdir() if p.name.startswith("latentspace-metrics-")] != []
    finally:
        proc.terminate()
        proc.wait(30)
    # the shared metrics directory goes with the server (runtimes may leave files of their own)
    assert [p for p in scratch.iterdir() if p.name.startswith("latentspace-metrics-")] == []


def test_serve_refuses_bad_settings_before_starting(tmp_path):
    proc = _serve("--model", "builtin:all-MiniLM-L6-v2", "--api-key", "short")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "at least 8 characters" in output and "short" not in output.replace("--api-key", "")
    proc = _serve("--model", "builtin:all-MiniLM-L6-v2", "--max-items", "50", "--max-queue-items", "10")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "max_queue_items" in output


def test_read_api_keys_merges_flags_file_and_environment(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("file-key-123456\n# comment\n")
    got = read_api_keys(["flag-key-123456"], keys, env={"LATENTSPACE_API_KEYS": "env-key-123456, flag-key-123456"})
    assert got == ("flag-key-123456", "file-key-123456", "env-key-123456")
    with pytest.raises(ValueError, match="cannot read the API key file"):
        read_api_keys(None, tmp_path / "missing", env={})
    with pytest.raises(ValueError, match="no whitespace"):
        read_api_keys(["has space inside"], None, env={})
