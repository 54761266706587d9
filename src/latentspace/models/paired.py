"""Our model directories as an Embedder: a trained vision tower with the text tower whose space
it lives in (kind "latentspace")."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from latentspace.data.transforms import Preprocess, describe_transform, eval_transform
from latentspace.models.embedder import Embedder
from latentspace.models.model_dir import load_vision, text_path_in
from latentspace.models.text_model import TowerText
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import VisionTower
from latentspace.space import check_same_space


class PairedModel(TowerText, Embedder):
    kind = "latentspace"
    modalities = ("text", "image")

    def __init__(self, vision: VisionTower, text: TextTower, preprocess: Preprocess, name: str):
        self._init_text_side(text)
        self.vision, self.preprocess, self.name = vision.eval(), preprocess, name
        self.identity = text.space
        self._transform = eval_transform(preprocess)

    @classmethod
    def load(cls, model_dir: str | Path, *, text_path: str | None = None) -> PairedModel:
        """Load a model directory; `text_path` overrides where the text tower is read from, and
        must still define the recorded space."""
        vision, config = load_vision(model_dir)
        path = text_path if text_path is not None else text_path_in(model_dir, config.text.path)
        text = TextTower(config.text.model_copy(update={"path": path}))
        check_same_space(config.space, text.space, what=f"vision model {model_dir}")
        return cls(vision, text, config.preprocess, name=config.name or Path(model_dir).name)

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def describe_preprocessing(self) -> dict:
        return describe_transform(self._transform)

    @torch.inference_mode()
    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels).float()

    @property
    def image_module(self) -> torch.nn.Module:
        return self.vision
