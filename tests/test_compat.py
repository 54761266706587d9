import pytest
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.compat import check_compat
from latentspace.config import TextTowerConfig, VisionTowerConfig
from latentspace.data.transforms import Preprocess
from latentspace.models.model_dir import save_model_dir
from latentspace.models.paired import PairedModel
from latentspace.models.vision_tower import VisionTower

import fakes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text_tower):
    vision = VisionTower(VisionTowerConfig(**fakes.TINY_VISION), text_tower.dim)
    return save_model_dir(
        tmp_path_factory.mktemp("compat") / "model",
        vision,
        text=TextTowerConfig(),
        space=text_tower.space,
        preprocess=Preprocess(16),
        logit_scale=10.0,
    )


def test_same_text_model_is_compatible_bit_for_bit(model_dir):
    report = check_compat(model_dir, "builtin:all-MiniLM-L6-v2")
    assert report.same_space and report.bit_identical and report.ok
    assert set(report.task_types) == {"search_document", "search_query", "classification", "clustering"}
    assert report.runtime == "torch-fp32"  # bit identity is checked on the reference runtime
    result = CliRunner().invoke(app, ["check-compat", str(model_dir), "--text", "builtin:all-MiniLM-L6-v2"])
    assert result.exit_code == 0 and "compatible" in result.output and "both on torch-fp32" in result.output


def test_another_space_is_reported_and_exits_1(model_dir, tmp_path):
    other = fakes.minilm_with_prompts(tmp_path, {"search_query": "query: ", "search_document": "passage: "})
    report = check_compat(model_dir, str(other))
    assert not report.same_space and report.max_abs_diff is None and "minilm-prefixed" in report.mismatch
    result = CliRunner().invoke(app, ["check-compat", str(model_dir), "--text", str(other)])
    assert result.exit_code == 1 and "different latent spaces" in result.output


def test_vectors_that_drift_are_caught(model_dir, monkeypatch):
    original = PairedModel.embed_texts

    def drifted(self, texts, task_type="search_query", **kw):
        return original(self, texts, task_type, **kw) + 1e-7

    monkeypatch.setattr(PairedModel, "embed_texts", drifted)
    report = check_compat(model_dir, "builtin:all-MiniLM-L6-v2")
    assert report.same_space and not report.bit_identical and 0 < report.max_abs_diff < 1e-6
