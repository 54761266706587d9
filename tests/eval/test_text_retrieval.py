"""The text-side retrieval benchmark: metrics by hand, chance levels, task files, and the promise
that a model directory's text side scores exactly what its text model scores alone."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.config import TextTowerConfig, VisionTowerConfig
from latentspace.data.transforms import Preprocess
from latentspace.eval.report import write_json, write_markdown
from latentspace.eval.runner import SuiteResult
from latentspace.eval.text_retrieval import (
    TextRetrievalTask,
    embed_by_length,
    evaluate_text_retrieval,
    load_text_task,
    ranking_chance,
)
from latentspace.models.load import load
from latentspace.models.model_dir import save_model_dir
from latentspace.models.paired import PairedModel
from latentspace.models.text_model import TextModel
from latentspace.models.vision_tower import VisionTower

import fakes

# Hand-placed 2-d vectors (angles in degrees): the scores below follow from the geometry.
ANGLES = {
    "q-cat": 0,
    "q-dog": 90,
    "q-car": 180,
    "cat": 10,
    "kitten": 60,
    "dog": 40,
    "car": 200,
    "truck": 0,
}


class AngleEmbedder:
    """A TextEmbedder that maps each known text to a unit vector at its angle, recording calls."""

    name, space = "angles", "angles@0"

    def __init__(self):
        self.calls: list[tuple[list[str], str]] = []

    def embed_texts(self, texts, task_type="search_query"):
        self.calls.append((list(texts), task_type))
        radians = torch.tensor([math.radians(ANGLES[t]) for t in texts])
        return torch.stack([radians.cos(), radians.sin()], dim=1)


TASK = TextRetrievalTask(
    name="toy",
    queries=["q-cat", "q-dog", "q-car"],
    documents=["cat", "kitten", "dog", "car", "truck"],
    relevant=[[0, 1], [2], [3]],
)


def test_metrics_by_hand():
    model = AngleEmbedder()
    result = evaluate_text_retrieval(model, TASK)
    # q-cat (0°): truck (0°) beats cat (10°), its best relevant document -> rank 2.
    # q-dog (90°): kitten (60°) beats dog (40°) -> rank 2.
    # q-car (180°): car (200°) is the closest of all -> rank 1.
    assert result.metrics["recall@1"] == pytest.approx(1 / 3)
    assert result.metrics["recall@5"] == result.metrics["recall@10"] == 1.0
    assert result.metrics["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert result.main_metric == "mrr" and result.type == "text_retrieval" and result.n_samples == 3
    # Queries as queries, documents as documents.
    assert {task_type for _, task_type in model.calls} == {"search_query", "search_document"}
    assert sorted(t for texts, kind in model.calls if kind == "search_query" for t in texts) == sorted(TASK.queries)


def test_a_tie_with_a_non_relevant_document_counts_against_the_model():
    task = TextRetrievalTask("ties", ["q-cat"], ["truck", "cat"], [[0]])
    ANGLES_TIE = {"q-cat": 0, "truck": 0, "cat": 0}

    class Flat(AngleEmbedder):
        def embed_texts(self, texts, task_type="search_query"):
            return torch.tensor([[math.cos(math.radians(ANGLES_TIE[t])), 0.0] for t in texts])

    assert evaluate_text_retrieval(Flat(), task).metrics["recall@1"] == 0.0


def test_chance_by_hand():
    one = ranking_chance(4, [1])
    assert one["recall@1"] == pytest.approx(1 / 4) and one["recall@5"] == 1.0
    assert one["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # Two relevant of four: first relevant at rank 1 w.p. 1/2, rank 2 w.p. 1/3, rank 3 w.p. 1/6.
    two = ranking_chance(4, [2])
    assert two["recall@1"] == pytest.approx(1 / 2)
    assert two["mrr"] == pytest.approx(1 / 2 + 1 / 3 / 2 + 1 / 6 / 3)
    mixed = ranking_chance(4, [1, 2])
    assert mixed["mrr"] == pytest.approx((one["mrr"] + two["mrr"]) / 2)


def test_chance_matches_a_random_model():
    generator = torch.Generator().manual_seed(0)
    n_docs, relevant = 30, [[i % 30, (i + 7) % 30][: 1 + i % 2] for i in range(400)]

    class Random:
        name, space = "random", "random@0"

        def embed_texts(self, texts, task_type="search_query"):
            return F.normalize(torch.randn(len(texts), 16, generator=generator), dim=-1)

    task = TextRetrievalTask("random", [f"q{i}" for i in range(400)], [f"d{i}" for i in range(n_docs)], relevant)
    measured = evaluate_text_retrieval(Random(), task)
    for key, expected in measured.chance.items():
        assert measured.metrics[key] == pytest.approx(expected, abs=0.05), key


def test_batches_by_length_but_returns_the_input_order():
    model = AngleEmbedder()
    texts = ["kitten", "q-cat", "cat", "dog", "truck"]
    rows = embed_by_length(model, texts, "search_document", batch_size=2)
    assert torch.allclose(rows, model.embed_texts(texts), atol=1e-6)
    assert [batch for batch, _ in model.calls[:3]] == [["cat", "dog"], ["q-cat", "truck"], ["kitten"]]


def test_task_files_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="latentspace data wordnet"):
        load_text_task(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"queries": [{"text": "q", "relevant": [3]}], "documents": ["d"]}))
    with pytest.raises(ValueError, match=r"query 0 needs relevant document indices in \[0, 1\)"):
        load_text_task(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"queries": [{"text": "q"}], "documents": ["d"]}))
    with pytest.raises(ValueError, match="not a text-retrieval task file"):
        load_text_task(tmp_path / "task.json")


def test_results_sit_beside_the_image_tasks_without_changing_the_average(tmp_path):
    result = SuiteResult(
        "m", "s", "suite", tasks=[], missing=[], text_tasks=[evaluate_text_retrieval(AngleEmbedder(), TASK)]
    )
    assert result.average is None
    write_json(result, tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text())["text_tasks"]
    assert saved == json.loads(json.dumps([asdict(task) for task in result.text_tasks]))
    write_markdown([result], tmp_path / "report.md")
    assert "| text: toy | mrr |" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- text side unchanged


def _write_task(path, task: TextRetrievalTask):
    path.mkdir(parents=True, exist_ok=True)
    (path / "task.json").write_text(
        json.dumps(
            {
                "name": task.name,
                "queries": [{"text": q, "relevant": r} for q, r in zip(task.queries, task.relevant)],
                "documents": task.documents,
            }
        )
    )
    return path


WORDS = TextRetrievalTask(
    name="words",
    queries=["a young cat", "a domesticated canine that barks", "a road vehicle with four wheels", "frozen water"],
    documents=["kitten", "dog", "car", "automobile", "ice", "violin", "thunderstorm"],
    relevant=[[0], [1], [2, 3], [4]],
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, text_tower):
    vision = VisionTower(VisionTowerConfig(**fakes.TINY_VISION), text_tower.dim)
    return save_model_dir(
        tmp_path_factory.mktemp("text-retrieval") / "model",
        vision,
        text=TextTowerConfig(),
        space=text_tower.space,
        preprocess=Preprocess(16),
        logit_scale=10.0,
    )


def test_a_model_directory_scores_what_its_text_model_scores_alone(model_dir, text_tower, tmp_path):
    ours = load(str(model_dir))
    alone = load("builtin:all-MiniLM-L6-v2")
    assert isinstance(ours, PairedModel) and isinstance(alone, TextModel) and ours.space == alone.space
    ours_result, alone_result = evaluate_text_retrieval(ours, WORDS), evaluate_text_retrieval(alone, WORDS)
    assert ours_result.metrics == alone_result.metrics
    assert alone_result.metrics["mrr"] > ranking_chance(7, [1, 1, 2, 1])["mrr"]  # MiniLM does know words

    task_dir = _write_task(tmp_path / "words", WORDS)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["eval-text", str(model_dir), "builtin:all-MiniLM-L6-v2", "--benchmark", str(task_dir), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = [json.loads(p.read_text())["text_tasks"][0]["metrics"] for p in sorted(out.glob("text-*.json"))]
    assert len(saved) == 2 and saved[0] == saved[1] == alone_result.metrics


def test_an_unknown_text_model_spec_says_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="does not exist; accepted forms: .*text model directory"):
        load(str(tmp_path / "nothing"))


def test_eval_adds_a_text_row_beside_the_image_tasks(model_dir, classification_task, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: tiny\ntasks:\n  - name: colours\n")
    task_dir = _write_task(tmp_path / "words", WORDS)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(model_dir),
            "--suite",
            str(suite),
            "--out",
            str(out),
            "--prompt-cache",
            str(tmp_path / "prompts"),
            "--text-benchmark",
            str(task_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "text side alone" in result.output and "words" in result.output
    report = json.loads((out / "eval.json").read_text())
    assert [t["name"] for t in report["tasks"]] == ["colours"] and report["text_tasks"][0]["name"] == "words"
    assert report["average"] == report["tasks"][0]["metrics"]["acc1"]  # the text row is not averaged
    alone = evaluate_text_retrieval(load("builtin:all-MiniLM-L6-v2"), WORDS)
    assert report["text_tasks"][0]["metrics"] == alone.metrics  # the prompt cache changes nothing
    assert "| text: words | mrr |" in (out / "report.md").read_text()
