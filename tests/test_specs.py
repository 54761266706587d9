"""Every spec form through every entry point: one table of specs, and for each entry point a test
that runs all of them. A spec that works in one place and not another fails here.

Entry points: `load` + `describe`, `latentspace models`, local `embed.text` / `embed.image`,
`latentspace eval` (image + text models), `latentspace eval-text` (models with text), the HTTP
server (one server serving every spec at once), and `check-compat` (models that record a space).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from latentspace import embed
from latentspace.cli import app
from latentspace.models.load import load
from latentspace.runtime import CANDIDATES, EXACT, RuntimeSettings, on_runtimes
from latentspace.serve.settings import ServeSettings

import fakes
from fakes import LiveServer

TEXTS = ["a red circle", "a blue square on a white table"]
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}


@dataclass(frozen=True)
class Form:
    id: str
    spec: str
    kind: str
    modalities: tuple[str, ...]
    records_space: bool = False  # check-compat applies


@pytest.fixture(scope="module")
def forms(tmp_path_factory, text_tower, nomic_models) -> list[Form]:
    root = tmp_path_factory.mktemp("specs")
    model_dir = fakes.save_tiny_model_dir(root / "ours", text_tower)
    lone_vision = root / "lone" / "vision-model"
    shutil.copytree(nomic_models / "nomic-embed-vision-v1.5", lone_vision)
    clip = fakes.make_hf_clip(root / "clip", seed=0)
    checkpoint = fakes.make_open_clip_checkpoint(root / "open_clip")
    st_dir = fakes.minilm_with_prompts(root, {"search_query": "query: ", "search_document": "passage: "})
    both, text = ("text", "image"), ("text",)
    return [
        Form("builtin", "builtin:all-MiniLM-L6-v2", "text", text),
        Form("ours", str(model_dir), "latentspace", both, records_space=True),
        Form("ours-text-option", f"{model_dir}?text=builtin:all-MiniLM-L6-v2", "latentspace", both, records_space=True),
        Form("st-dir", str(st_dir), "text", text),
        Form("nomic-text", str(nomic_models / "nomic-embed-text-v1.5"), "text", text),
        Form("nomic-text-ntk", f"{nomic_models / 'nomic-embed-text-v1.5'}?rotary_scaling_factor=2", "text", text),
        Form("nomic-vision", str(nomic_models / "nomic-embed-vision-v1.5"), "nomic-vision", both, records_space=True),
        Form(
            "nomic-vision-text-option",
            f"{lone_vision}?text={nomic_models / 'nomic-embed-text-v1.5'}",
            "nomic-vision",
            both,
            records_space=True,
        ),
        Form("nomic-vision-unpaired", str(lone_vision), "nomic-vision", ("image",)),
        Form("hf-clip-dir", str(clip), "hf-clip", both),
        Form("hf-clip-prefix", f"hf-clip:{clip}", "hf-clip", both),
        Form("open-clip", f"open_clip:{fakes.OPEN_CLIP_TINY_ARCH}:{checkpoint}", "open_clip", both),
    ]


def _images() -> list[Image.Image]:
    return [fakes.draw("red circle"), Image.new("RGB", (40, 24), COLOURS["blue"])]


def test_load_and_models_command_resolve_every_form(forms):
    runner = CliRunner()
    for form in forms:
        model = load(form.spec)
        assert (model.kind, model.modalities) == (form.kind, form.modalities), form.id
        described = model.describe()
        assert described["dimension"] == model.dim and described["space"] == model.space
        result = runner.invoke(app, ["models", form.spec, "--json"])
        assert result.exit_code == 0, (form.id, result.output)
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        assert (printed["kind"], printed["space"], printed["modalities"]) == (
            form.kind,
            model.space,
            list(form.modalities),
        )


def test_local_embed_accepts_every_form(forms):
    for form in forms:
        model = load(form.spec)
        if "text" in form.modalities:
            out = embed.text(TEXTS, model=form.spec, task_type="search_query")
            assert out["space"] == model.space and out["usage"]["total_tokens"] > 0, form.id
            np.testing.assert_allclose(out["embeddings"], model.embed_texts(TEXTS, "search_query").numpy(), atol=1e-6)
        else:
            with pytest.raises(ValueError, match="images only"):
                embed.text(TEXTS, model=form.spec)
        if "image" in form.modalities:
            want = model.embed_images(_images()).numpy()
            out = embed.image(_images(), model=form.spec)  # on auto's runtime: within the bound
            assert np.asarray(out["embeddings"]).shape == (2, model.dim), form.id
            assert out["runtime"] in {f"{r}-{p}" for r, p in CANDIDATES}, form.id
            assert (np.asarray(out["embeddings"]) * want).sum(axis=1).min() >= 0.999, form.id
            exact = embed.image(_images(), model=form.spec, runtime="torch", precision="fp32")
            assert exact["runtime"] == "torch-fp32"
            np.testing.assert_allclose(exact["embeddings"], want, atol=1e-6)
        else:
            with pytest.raises(ValueError, match="text only"):
                embed.image(_images(), model=form.spec)


def _png(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A one-task classification suite and a text-retrieval task."""
    root = tmp_path_factory.mktemp("suite")
    task = root / "colours"
    (task / "test").mkdir(parents=True)
    (task / "classnames.txt").write_text("\n".join(COLOURS) + "\n")
    (task / "test" / "nshards.txt").write_text("1\n")
    with wds.TarWriter(str(task / "test" / "0.tar")) as sink:
        for i, rgb in enumerate(COLOURS.values()):
            sink.write({"__key__": f"s{i}", "png": _png(rgb), "cls": i})
    (root / "suite.yaml").write_text(
        "name: tiny\ntasks:\n- {name: colours, type: zeroshot_classification, main_metric: acc1}\n"
    )
    words = root / "words"
    words.mkdir()
    (words / "task.json").write_text(
        json.dumps(
            {
                "name": "words",
                "documents": ["kitten", "dog", "car"],
                "queries": [{"text": "a young cat", "relevant": [0]}, {"text": "a road vehicle", "relevant": [2]}],
            }
        )
    )
    return root


def test_eval_and_eval_text_accept_every_form(forms, suite, tmp_path):
    runner = CliRunner()
    for form in forms:
        if set(form.modalities) == {"text", "image"}:
            result = runner.invoke(
                app,
                [
                    "eval",
                    form.spec,
                    "--suite",
                    str(suite / "suite.yaml"),
                    "--out",
                    str(tmp_path / form.id),
                    "--prompt-cache",
                    str(tmp_path / "pc"),
                ],
            )
            assert result.exit_code == 0, (form.id, result.output)
            report = json.loads((tmp_path / form.id / "eval.json").read_text())
            assert report["tasks"][0]["name"] == "colours"
            # which runtime made the numbers: images auto's choice (as on_runtimes makes it), texts exact
            expected = on_runtimes(load(form.spec)).runtime_names()
            assert report["runtimes"] == expected and report["runtimes"]["text"] == "torch-fp32", form.id
            assert "Forwards ran on:" in (tmp_path / form.id / "report.md").read_text()
        if "text" in form.modalities:
            result = runner.invoke(
                app,
                [
                    "eval-text",
                    form.spec,
                    "--benchmark",
                    str(suite / "words"),
                    "--out",
                    str(tmp_path / f"text-{form.id}"),
                    "--text-runtime",
                    "onnxruntime",
                    "--text-precision",
                    "fp32",
                ],
            )
            assert result.exit_code == 0, (form.id, result.output)
            report = json.loads(next((tmp_path / f"text-{form.id}").glob("text-*.json")).read_text())
            # what ran: ONNX Runtime where the text forward exports (not open_clip's, not NomicBERT's
            # rotary attention, which fall back to PyTorch), as the runtime layer reports it
            asked = RuntimeSettings(runtime="onnxruntime", precision="fp32")
            probe = on_runtimes(load(form.spec), image=EXACT, text=asked)
            probe.embed_texts(["a word", "a longer text of several more words"])  # a graph that kept a shape fails here
            expected = probe.runtime_names()["text"]
            assert report["runtimes"] == {"text": expected}, form.id
            assert expected == "onnxruntime-fp32" or form.kind in ("open_clip", "text", "nomic-vision"), form.id
        else:
            result = runner.invoke(app, ["eval-text", form.spec, "--benchmark", str(suite / "words")])
            assert result.exit_code == 2 and "images only" in result.output, form.id


def test_one_server_serves_every_form_as_local_mode_does(forms):
    # PyTorch runtimes: this is about spec forms (tests/runtime measures runtimes)
    settings = ServeSettings(
        models=[f"{f.id}={f.spec}" for f in forms],
        decode_threads=1,
        image_runtime="torch",
        image_precision="fp32",
        text_runtime="torch",
        text_precision="fp32",
    )
    with LiveServer(settings) as server:
        server.wait_ready()
        listed = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
        png = io.BytesIO()
        _images()[0].save(png, format="PNG")
        for form in forms:
            model = load(form.spec)
            assert (listed[form.id]["kind"], listed[form.id]["space"]) == (form.kind, model.space)
            text = httpx.post(
                server.url + "/v1/embedding/text",
                json={"model": form.id, "texts": TEXTS, "task_type": "search_query"},
                timeout=60,
            )
            image = httpx.post(
                server.url + "/v1/embedding/image",
                data={"model": form.id},
                files=[("images", ("a.png", png.getvalue()))],
                timeout=60,
            )
            if "text" in form.modalities:
                assert text.status_code == 200, (form.id, text.text)
                np.testing.assert_allclose(
                    text.json()["embeddings"], model.embed_texts(TEXTS, "search_query").numpy(), atol=1e-5
                )
            else:
                assert text.status_code == 400 and "images only" in text.json()["detail"], form.id
            if "image" in form.modalities:
                assert image.status_code == 200, (form.id, image.text)
                want = model.embed_images([Image.open(io.BytesIO(png.getvalue()))])
                np.testing.assert_allclose(image.json()["embeddings"], want.numpy(), atol=1e-5)
            else:
                assert image.status_code == 400 and "text only" in image.json()["detail"], form.id


def test_check_compat_accepts_every_form_that_records_a_space(forms, nomic_models):
    runner = CliRunner()
    text_for = {"latentspace": "builtin:all-MiniLM-L6-v2", "nomic-vision": str(nomic_models / "nomic-embed-text-v1.5")}
    for form in forms:
        base = form.spec.split("?")[0]
        if form.records_space:
            result = runner.invoke(app, ["check-compat", base, "--text", text_for[form.kind]])
            assert result.exit_code == 0 and "compatible" in result.output, (form.id, result.output)
        elif "image" in form.modalities and form.kind != "nomic-vision":
            result = runner.invoke(app, ["check-compat", base, "--text", "builtin:all-MiniLM-L6-v2"])
            assert result.exit_code == 2 and "option text=" in result.output, (form.id, result.output)
    # an unpaired Nomic vision model is checked against the text model it is given
    lone = next(f for f in forms if f.id == "nomic-vision-unpaired").spec
    assert runner.invoke(app, ["check-compat", lone, "--text", text_for["nomic-vision"]]).exit_code == 0
