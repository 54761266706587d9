"""Text embeddings of class prompts and captions, cached on disk per model space.

Evaluating the emoji suite embeds ~17k prompts and captions, the DataComp suite far more; the
images change with the model, the prompts do not. Wrapping a model in `PromptCache` makes every
repeated `embed_texts` call (same space, task type and texts) a file read. The key includes the
model's space string, which for our models and the baselines fingerprints the text encoder's
weights, so a different model can never be served another model's vectors, and the runtime of
its text forward (a vector from OpenVINO is not PyTorch's to the bit).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from latentspace import atomic
from latentspace.models.embedder import Embeds


class PromptCache:
    """Embeds like `model` does, with text embeddings cached under `root`."""

    def __init__(self, model: Embeds, root: str | Path):
        self.model = model
        self.name, self.space = model.name, model.space
        self.dir = Path(root) / re.sub(r"[^A-Za-z0-9._@-]+", "_", model.space)

    def embed_images(self, images: Sequence) -> torch.Tensor:
        return self.model.embed_images(images)

    def runtime_names(self) -> dict[str, str]:
        return self.model.runtime_names()

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor:
        runtime = self.model.runtime_names().get("text", "torch-fp32")
        digest = hashlib.sha256("\x1f".join([self.space, runtime, task_type, *texts]).encode()).hexdigest()[:32]
        path = self.dir / f"{digest}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                if cached.shape[0] == len(texts):
                    return cached
            except Exception:  # a torn file from a killed run: recompute and overwrite it
                pass
        vectors = self.model.embed_texts(list(texts), task_type=task_type).detach().float().cpu()
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic.replacing(path) as tmp:
            torch.save(vectors, tmp)
        return vectors
