"""Baselines through the evaluation harness, with tiny randomly initialised models saved locally.

Nothing is downloaded: the Hugging Face CLIP directory is written with `save_pretrained` and a
hand-made byte-level tokenizer, the open_clip model from a registered tiny config.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import webdataset as wds
from PIL import Image

from latentspace.eval.runner import evaluate_task
from latentspace.eval.tasks import CLASSIFICATION, RETRIEVAL, TaskSpec
from latentspace.models.baselines import HFClipModel, OpenClipModel, is_hf_clip_dir
from latentspace.models.load import SpecError
from latentspace.models.load import load as load_embedder

import fakes
from fakes import PROJECTION_DIM, make_hf_clip

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


# --- tiny local models -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_hf_clip(tmp_path_factory.mktemp("hf") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def clip(clip_dir) -> HFClipModel:
    return HFClipModel(clip_dir)


# --- a small task in the on-disk format the harness reads -----------------------------------------


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def write_task(root: Path, name: str, samples: list[dict], **text_files: str) -> Path:
    task = root / name
    (task / "test").mkdir(parents=True)
    for filename, text in text_files.items():
        (task / f"{filename}.txt").write_text(text)
    (task / "test" / "nshards.txt").write_text("1\n")
    with wds.TarWriter(str(task / "test" / "0.tar")) as sink:
        for i, sample in enumerate(samples):
            sink.write({"__key__": f"s{i:04d}", **sample})
    return task


def _assert_metrics_in_unit_interval(result) -> None:
    assert result.n_samples > 0 and result.n_skipped == 0
    assert result.metrics and all(0.0 <= v <= 1.0 for v in result.metrics.values())


def _run_both_tasks(model, tmp_path: Path) -> None:
    names = list(COLOURS)
    classification = write_task(
        tmp_path,
        "colours",
        [{"png": _png(c), "cls": i} for i, c in enumerate(names)] * 2,
        classnames="\n".join(names) + "\n",
        zeroshot_classification_templates="a photo of {c}.\n{c} art\n",
    )
    retrieval = write_task(
        tmp_path, "captions", [{"png": _png(c), "txt": f"a {c} square\n{c}"} for c in names], dataset_type="retrieval\n"
    )
    _assert_metrics_in_unit_interval(
        evaluate_task(model, classification, TaskSpec("colours", CLASSIFICATION, "acc1"), batch_size=4, progress=False)
    )
    _assert_metrics_in_unit_interval(
        evaluate_task(model, retrieval, TaskSpec("captions", RETRIEVAL, "mean_recall@1"), progress=False)
    )


def _rgba_and_composite() -> tuple[Image.Image, Image.Image]:
    """A half-transparent RGBA image and its composite on white, as `to_rgb` defines it."""
    rgba = Image.new("RGBA", (24, 24), (200, 30, 30, 0))
    rgba.paste((10, 120, 240, 255), (0, 0, 12, 24))
    composite = Image.new("RGB", rgba.size, (255, 255, 255))
    composite.paste(rgba, mask=rgba.getchannel("A"))
    return rgba, composite


def _assert_normalised(vectors: torch.Tensor, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim) and vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(n), atol=1e-5)


# --- Hugging Face CLIP ---------------------------------------------------------------------------


def test_hf_clip_shapes_and_normalised_rows(clip):
    images = [Image.new("RGB", (40, 30), "red"), Image.new("L", (8, 8), 128), Image.new("P", (33, 33))]
    _assert_normalised(clip.embed_images(images), 3, PROJECTION_DIM)
    _assert_normalised(clip.embed_texts(["a red square", "blue", ""]), 3, PROJECTION_DIM)
    assert clip.embed_images([]).shape == (0, PROJECTION_DIM)


def test_hf_clip_ignores_task_type_and_batches_consistently(clip):
    texts = ["a red square", "a much longer caption about a blue tile " * 4, "green"]
    query = clip.embed_texts(texts, task_type="search_query")
    assert torch.equal(query, clip.embed_texts(texts, task_type="search_document"))
    clip.batch_size = 1
    try:
        assert torch.allclose(query, clip.embed_texts(texts), atol=1e-5)  # padding does not change vectors
    finally:
        clip.batch_size = 64


def test_hf_clip_rgba_equals_its_rgb_composite(clip):
    rgba, composite = _rgba_and_composite()
    assert torch.equal(clip.embed_images([rgba]), clip.embed_images([composite]))


def test_hf_clip_runs_through_the_eval_harness(clip, tmp_path):
    _run_both_tasks(clip, tmp_path)


def test_hf_clip_space_identifies_the_weights(clip, clip_dir, tmp_path):
    other = HFClipModel(make_hf_clip(tmp_path / "tiny-clip", seed=1))  # same directory name, other weights
    assert clip.space.startswith("hf-clip:tiny-clip-16d@") and other.space.startswith("hf-clip:tiny-clip-16d@")
    assert clip.space != other.space
    assert HFClipModel(clip_dir).space == clip.space  # stable across loads


def test_hf_clip_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        HFClipModel(tmp_path / "nope")


def test_load_embedder_recognises_hf_clip(clip_dir, clip):
    assert is_hf_clip_dir(clip_dir)
    assert isinstance(load_embedder(f"hf-clip:{clip_dir}"), HFClipModel)
    assert load_embedder(str(clip_dir)).space == clip.space  # no prefix needed for a CLIP config.json


def test_load_embedder_rejects_unknown_specs(tmp_path):
    for spec in (str(tmp_path), str(tmp_path / "missing"), "builtin-ish:thing"):
        with pytest.raises(SpecError, match="accepted forms"):
            load_embedder(spec)
    with pytest.raises(ValueError, match="open_clip:ARCH:CHECKPOINT"):
        load_embedder("open_clip:ViT-B-32")


def test_load_embedder_loads_our_model_dirs(tmp_path, monkeypatch):
    from latentspace.models import paired

    (tmp_path / "config.json").write_text(json.dumps({"format": _model_dir_format()}))
    opened = SimpleNamespace()
    monkeypatch.setattr(paired.PairedModel, "load", classmethod(lambda cls, path, text_path: opened))
    assert load_embedder(str(tmp_path)) is opened and opened.spec == str(tmp_path)


def _model_dir_format() -> str:
    from latentspace.models.model_dir import FORMAT

    return FORMAT


# --- open_clip -----------------------------------------------------------------------------------

TINY_ARCH = fakes.OPEN_CLIP_TINY_ARCH


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("open_clip")
    return fakes.make_open_clip_checkpoint(tmp_path_factory.mktemp("open_clip"))


def test_open_clip_protocol_and_harness(open_clip_checkpoint, tmp_path):
    model = load_embedder(f"open_clip:{TINY_ARCH}:{open_clip_checkpoint}")
    assert isinstance(model, OpenClipModel) and model.space.startswith(f"open_clip:{TINY_ARCH}-{PROJECTION_DIM}d@")
    _assert_normalised(
        model.embed_images([Image.new("RGB", (40, 30), "red"), Image.new("L", (9, 9))]), 2, PROJECTION_DIM
    )
    _assert_normalised(model.embed_texts(["a red square", ""], task_type="search_document"), 2, PROJECTION_DIM)
    rgba, composite = _rgba_and_composite()
    assert torch.equal(model.embed_images([rgba]), model.embed_images([composite]))
    _run_both_tasks(model, tmp_path)


def test_open_clip_space_identifies_the_weights(open_clip_checkpoint, tmp_path):
    import open_clip

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(TINY_ARCH).state_dict(), other)
    assert OpenClipModel(TINY_ARCH, open_clip_checkpoint).space != OpenClipModel(TINY_ARCH, other).space


def test_open_clip_errors_name_the_file(open_clip_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        OpenClipModel(TINY_ARCH, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        OpenClipModel(TINY_ARCH, corrupt)
    with pytest.raises(ValueError, match="no-such-arch"):
        OpenClipModel("no-such-arch", open_clip_checkpoint)


def test_cli_puts_two_baselines_side_by_side(tmp_path, clip_dir):
    """`latentspace eval A B --suite S` runs both through the same harness into one report."""
    from typer.testing import CliRunner

    from latentspace.cli import app

    other = make_hf_clip(tmp_path / "other-clip", seed=1)
    names = list(COLOURS)
    write_task(
        tmp_path / "suite",
        "colours",
        [{"png": _png(c), "cls": i} for i, c in enumerate(names)],
        classnames="\n".join(names) + "\n",
    )
    suite = tmp_path / "suite" / "suite.yaml"
    suite.write_text(
        "name: tiny\ntasks:\n- {name: colours, type: zeroshot_classification, main_metric: acc1}\n"
        "- {name: absent, type: zeroshot_classification, main_metric: acc1}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "eval",
            f"hf-clip:{clip_dir}",
            str(other),
            "--suite",
            str(suite),
            "--out",
            str(tmp_path / "out"),
            "--prompt-cache",
            str(tmp_path / "pc"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert "colours" in report and "absent" in report and "—" in report
    assert len(list((tmp_path / "out").glob("eval-*.json"))) == 2
    assert (tmp_path / "out" / "chart.png").stat().st_size > 1000
