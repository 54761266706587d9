"""`latentspace check-compat`: does a vision model live in the space of a given text model?

Two checks. (1) Identity: the space recorded in the vision model directory equals the space the
text model defines (name, dim, fingerprint). (2) Behaviour: text embedded through the model
directory is bit-identical to text embedded by the text model on its own, for every task type the
text model supports — the promise of a locked text tower, checked on real vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentspace.config import TextTowerConfig
from latentspace.models.model_dir import read_model_config
from latentspace.models.paired import PairedModel
from latentspace.models.text_tower import TASK_TYPES, TextTower
from latentspace.space import SpaceIdentity

# Short, long, non-ASCII, empty and whitespace-only inputs: the cases where tokenisation,
# truncation and pooling differences would show first.
PROBE_TEXTS = [
    "a red heart",
    "search for a photo of a dog playing in the snow",
    "Grüße aus Köln — ünïcödé, emoji 🚀 and CJK 漢字",
    "",
    "   ",
    " ".join(["a very long caption that goes past the token limit"] * 60),
    "42",
]


@dataclass
class CompatReport:
    recorded: SpaceIdentity
    given: SpaceIdentity
    task_types: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # None when the spaces differ (vectors not compared)

    @property
    def same_space(self) -> bool:
        return self.recorded == self.given

    @property
    def bit_identical(self) -> bool:
        return self.max_abs_diff == 0.0

    @property
    def ok(self) -> bool:
        return self.same_space and self.bit_identical


def check_compat(model_dir: str | Path, text_model: str) -> CompatReport:
    config = read_model_config(model_dir)
    recorded = SpaceIdentity.from_dict(config["space"])
    recorded_text = TextTowerConfig.model_validate(config["text"])
    original = TextTower(recorded_text.model_copy(update={"path": text_model}))
    report = CompatReport(recorded=recorded, given=original.space)
    if not report.same_space:
        return report
    paired = PairedModel.load(model_dir)
    task_types = sorted(original.prefixes) if original.prefixes else list(TASK_TYPES)
    diff = 0.0
    for task_type in task_types:
        ours = paired.embed_texts(PROBE_TEXTS, task_type)
        theirs = original.encode(PROBE_TEXTS, task_type)
        diff = max(diff, float((ours - theirs).abs().max()) if not torch.equal(ours, theirs) else 0.0)
    report.task_types, report.max_abs_diff = task_types, diff
    return report
