"""`latentspace check-compat`: does an image model live in the space of a given text model?

Two checks. (1) Identity: the model is loaded with its text side read from the given text model
(`load(MODEL, text=TEXT)`), which fails if the space the model records is not the one that text
model defines: for our model directories the recorded fingerprint (weights, tokenizer, pooling,
prefixes, ...); for Nomic's published vision directories, which carry no fingerprint of the text
weights, the release (vision v1.5 belongs to text v1.5). (2) Behaviour: text embedded through the
model is bit-identical to text embedded by the text model on its own, with the settings the model
records, for every task type the text model supports: the promise of a locked text tower, checked
on real vectors. Both sides run on PyTorch fp32, the reference runtime (latentspace.runtime): bit
identity is a property of the weights and the recipe, and only the reference can show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from latentspace.models.embedder import Embedder
from latentspace.models.load import load
from latentspace.models.text_model import TextModel
from latentspace.models.text_tower import TextTower
from latentspace.runtime import EXACT, on_runtimes
from latentspace.space import SpaceIdentity, SpaceMismatchError

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
    space: SpaceIdentity | None  # the shared space, when the model accepted the text model
    mismatch: str | None = None  # why not, when it did not
    task_types: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None  # None when the spaces differ (vectors not compared)
    runtime: str = EXACT.runtime + "-" + EXACT.precision  # what ran the text forwards compared

    @property
    def same_space(self) -> bool:
        return self.mismatch is None

    @property
    def bit_identical(self) -> bool:
        return self.max_abs_diff == 0.0

    @property
    def ok(self) -> bool:
        return self.same_space and self.bit_identical


def check_compat(model_spec: str, text_spec: str) -> CompatReport:
    try:
        model = load(str(model_spec), text=text_spec)
    except SpaceMismatchError as e:
        return CompatReport(space=None, mismatch=str(e))
    model.require("text")
    reference = TextModel(TextTower(model.text.cfg))  # the text model alone, as the model uses it
    model, reference = (on_runtimes(m, image=EXACT, text=EXACT) for m in (model, reference))
    if reference.identity != model.identity:
        return CompatReport(
            space=None,
            mismatch=f"{model.name} records space {model.identity}, the text model defines {reference.identity}",
        )
    task_types = list(reference.task_types)
    diff = max(_max_diff(model, reference, task) for task in task_types)
    runtime = {m.runtime_names()["text"] for m in (model, reference)}
    return CompatReport(space=model.identity, task_types=task_types, max_abs_diff=diff, runtime=" and ".join(runtime))


def _max_diff(model: Embedder, reference: Embedder, task_type: str) -> float:
    ours = model.embed_texts(PROBE_TEXTS, task_type)
    theirs = reference.embed_texts(PROBE_TEXTS, task_type)
    return 0.0 if torch.equal(ours, theirs) else float((ours - theirs).abs().max())
