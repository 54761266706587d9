"""The one interface evaluation and serving need from any image-text model.

Our own paired model implements it, and so can a baseline (open_clip, Hugging Face CLIP): the
evaluation harness never needs to know which it is talking to.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from PIL import Image


@runtime_checkable
class ImageTextEmbedder(Protocol):
    """Embeds images and texts into one space. Both methods return L2-normalised float32 rows."""

    name: str  # readable model name, shown in reports
    space: str  # latent-space identity string, e.g. "all-MiniLM-L6-v2@3f2a9c0d1e4b"

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) embeddings; accepts PIL images of any mode and size."""
        ...

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor:
        """(N, D) embeddings; task_type selects the text model's prefix (if it uses one)."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """The text side alone, all a text benchmark needs: every ImageTextEmbedder is one, and so is
    a text model on its own (`baselines.TextModelEmbedder`)."""

    name: str
    space: str

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor:
        """(N, D) L2-normalised float32 rows; task_type selects the text model's prefix."""
        ...
