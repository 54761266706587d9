"""A trained vision tower together with the frozen text tower whose space it lives in."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from latentspace.config import TextTowerConfig
from latentspace.data.images import load_image
from latentspace.data.transforms import Preprocess, eval_transform
from latentspace.models.model_dir import load_vision, text_path_in
from latentspace.models.text_tower import TextTower, finish
from latentspace.models.vision_tower import VisionTower
from latentspace.space import SpaceIdentity, check_same_space


class PairedModel:
    """Implements ImageTextEmbedder for our own model directories."""

    def __init__(self, vision: VisionTower, text: TextTower, preprocess: Preprocess, name: str):
        self.vision, self.text, self.preprocess, self.name = vision.eval(), text, preprocess, name
        self.space = str(text.space)
        self.identity: SpaceIdentity = text.space
        self._transform = eval_transform(preprocess)

    @classmethod
    def load(cls, model_dir: str | Path, *, text_path: str | None = None) -> "PairedModel":
        """Load a model directory; `text_path` overrides where the text tower is read from, and
        must still define the recorded space."""
        vision, config = load_vision(model_dir)
        text_cfg = TextTowerConfig.model_validate(config["text"])
        text_cfg = text_cfg.model_copy(update={"path": text_path_in(model_dir, text_cfg.path)})
        if text_path is not None:
            text_cfg = text_cfg.model_copy(update={"path": text_path})
        text = TextTower(text_cfg)
        check_same_space(SpaceIdentity.from_dict(config["space"]), text.space, what=f"vision model {model_dir}")
        return cls(vision, text, Preprocess.from_dict(config["preprocess"]), name=str(config.get("name") or Path(model_dir).name))

    @property
    def dim(self) -> int:
        return self.identity.dim

    @torch.inference_mode()
    def embed_images(self, images: Sequence, *, dimensionality: int | None = None, batch_size: int = 128) -> torch.Tensor:
        """Paths, bytes or PIL images (any mode) -> (N, D) normalised embeddings."""
        pils = [load_image(img) for img in images]  # decode everything first: a bad input fails fast
        out = []
        for i in range(0, len(pils), batch_size):
            batch = torch.stack([self.preprocess_image(p) for p in pils[i : i + batch_size]])
            out.append(self.embed_pixels(batch))
        vectors = torch.cat(out) if out else torch.empty(0, self.dim)
        return finish(vectors, dimensionality)

    # The two halves of embed_images, for callers that batch across requests (the server):
    # preprocessing runs per image on any thread, the forward on whole batches.
    def preprocess_image(self, image) -> torch.Tensor:
        """An RGB PIL image -> the (3, H, W) float tensor the vision tower takes."""
        return self._transform(image)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float32 rows (not yet normalised)."""
        return self.vision(pixels).float()

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query", *,
                    dimensionality: int | None = None) -> torch.Tensor:
        return self.text.encode(texts, task_type, dimensionality=dimensionality)

