"""The plain install is the remote client: `pip install latentspace` into a fresh environment
without torch, then embed texts and images through a real server started from the full install.

This builds the package from the working tree (a copy, so no build files land in the repository)
and installs its three dependencies from the package index, as a user's `pip install` would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentspace import embed
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

REPO = Path(__file__).resolve().parents[1]
KEY = "light-client-key"

# Runs inside the light environment: embeds through the server and reports what it imported.
CLIENT_SCRIPT = r"""
import json, sys
from latentspace import embed
texts = embed.text(["a red heart", "rain"], model="tiny", base_url=sys.argv[1], api_key=sys.argv[2],
                   task_type="search_query")
images = embed.image([sys.argv[3]], model="tiny", base_url=sys.argv[1], api_key=sys.argv[2])
mixed = embed.mixed(["rain", {"type": "image", "image": sys.argv[3]}], model="tiny", base_url=sys.argv[1],
                    api_key=sys.argv[2], task_type="search_query")
heavy = sorted(m for m in ("torch", "transformers", "timm", "fastapi", "pydantic") if m in sys.modules)
print(json.dumps({"texts": texts["embeddings"], "images": images["embeddings"], "mixed": mixed["embeddings"],
                  "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with `pip install latentspace` (no extras) and nothing else."""
    root = tmp_path_factory.mktemp("light")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"plain install failed:\n{done.stdout}\n{done.stderr}"
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory, text_tower):
    model_dir = fakes.save_tiny_model_dir(tmp_path_factory.mktemp("light-model") / "tiny", text_tower)
    settings = ServeSettings(
        models=[f"tiny={model_dir}"],
        api_keys=(KEY,),
        image_runtime="torch",
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(settings) as live:
        yield live.wait_ready()


def test_plain_install_has_no_model_stack(light_python):
    installed = subprocess.run(
        [str(light_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "latentspace" in names
    assert not names & {"torch", "transformers", "timm", "fastapi", "uvicorn", "pydantic", "typer"}, names


def test_plain_install_embeds_through_a_server(light_python, server, tmp_path):
    picture = tmp_path / "heart.png"
    picture.write_bytes(fakes.png_bytes(fakes.draw("red heart")))
    done = subprocess.run(
        [str(light_python), "-c", CLIENT_SCRIPT, server.url, KEY, str(picture)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["heavy"] == []  # the client imported none of the model or server stack

    # The same requests from the full install give the same vectors.
    remote = {"model": "tiny", "base_url": server.url, "api_key": KEY}
    want_texts = embed.text(["a red heart", "rain"], task_type="search_query", **remote)["embeddings"]
    want_image = embed.image([str(picture)], **remote)["embeddings"]
    np.testing.assert_allclose(np.array(out["texts"]), np.array(want_texts), atol=1e-6)
    np.testing.assert_allclose(np.array(out["images"]), np.array(want_image), atol=1e-6)
    np.testing.assert_allclose(np.array(out["mixed"]), np.array([want_texts[1], want_image[0]]), atol=1e-6)


def test_command_line_names_the_extra_to_install(light_python):
    command = light_python.parent / "latentspace"
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'latentspace[all]'" in done.stderr
    assert "Traceback" not in done.stderr
