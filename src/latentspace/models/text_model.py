"""A text tower as an Embedder: on its own (kind "text"), and as the text side of image models.

`TowerText` maps the Embedder's text steps onto a `TextTower`; `TextModel` is a text model alone
(the "builtin" and "text" kinds of models/load.py).
Our model directories and Nomic's vision model reuse `TowerText` for their text side, which is
why text vectors through them are bit-identical to the text model's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentspace.config import TextTowerConfig
from latentspace.models.embedder import TASK_TYPES, Embedder
from latentspace.models.text_tower import TextTower


class TowerText:
    """The text steps of an Embedder, delegated to `self.text` (a TextTower)."""

    text: TextTower

    def _init_text_side(self, tower: TextTower) -> None:
        self.text = tower
        self.max_tokens = tower.max_length
        self.task_types = tuple(tower.prefixes) if tower.prefixes else TASK_TYPES
        self.text_batch_size = tower.cfg.batch_size
        self.pad_id = tower.pad_id

    def check_task_type(self, task_type: str) -> str:
        self.require("text")
        self.text.prefix_for(task_type)  # raises with the model's own list of task types
        return task_type

    def text_prefix(self, task_type: str) -> str | None:
        self.require("text")
        try:
            return self.text.prefix_for(task_type)
        except ValueError:  # a task type this text model has no prefix for
            return None

    def tokenize(self, texts: Sequence[str], task_type: str) -> list[list[int]]:
        self.require("text")  # a model whose text side is optional (Nomic vision) may have none
        return self.text.token_ids(texts, task_type)

    @torch.inference_mode()
    def text_rows(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        # Truncated to the tower's own Matryoshka size (text.dimensionality), if it has one.
        return self.text.forward_ids(ids)[:, : self.text.dim]

    def split_long(self, text: str, task_type: str) -> list[str]:
        self.require("text")
        return self.text.split_long(text, task_type)

    @property
    def text_module(self) -> torch.nn.Module:
        self.require("text")
        return self.text.text_module()


class TextModel(TowerText, Embedder):
    """A text model alone: embeds text into the space it defines."""

    kind = "text"
    modalities = ("text",)

    def __init__(self, tower: TextTower):
        self._init_text_side(tower)
        self.name, self.identity = tower.name, tower.space

    @classmethod
    def load(cls, path: str, **settings) -> TextModel:
        return cls(TextTower(TextTowerConfig(path=path, **settings)))
