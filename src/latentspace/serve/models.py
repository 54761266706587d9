"""What the server needs from a model, whatever kind it is.

A served model is one of:
- a latentspace model directory: images, and text through its frozen text tower;
- a text model (sentence-transformers / Hugging Face directory or builtin:all-MiniLM-L6-v2): text only;
- a Hugging Face CLIP directory (`hf-clip:DIR`, or a directory whose config says model_type clip).

`ServedModel` gives them one face: per-image preprocessing (run on decode threads), a batched
pixel forward and a batched text forward (run on the model's inference thread), token counting
for usage and batching, and the latent-space identity that /v1/models reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image

from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig
from latentspace.models.baselines import HF_PREFIX, HFClipModel, is_hf_clip_dir
from latentspace.models.model_dir import is_model_dir
from latentspace.models.paired import PairedModel
from latentspace.models.text_tower import TextTower, split_to_fit
from latentspace.serve.backends import Backend, Precision, accelerate


def parse_model_arg(arg: str) -> tuple[str, str]:
    """'NAME=SPEC' or 'SPEC' -> (name, spec); the default name is the directory's name."""
    name, sep, spec = arg.partition("=")
    if not sep or not name or "/" in name:
        spec = arg
        name = Path(spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec).expanduser().name or spec
    return name, spec


@dataclass
class ServedModel:
    name: str
    spec: str
    kind: str  # "latentspace" | "text" | "hf-clip"
    space: str  # the latent-space identity, as local mode reports it
    identity: dict[str, Any]  # {"name", "fingerprint", "dim"}; {"id", "dim"} for CLIP
    dim: int
    max_tokens: int
    embed_texts: Callable[[list[str], str], torch.Tensor]  # normalised (N, dim) rows
    token_counts: Callable[[list[str], str], list[int]]
    split_long: Callable[[str, str], list[str]]
    preprocess_image: Callable[[Image.Image], torch.Tensor] | None = None
    embed_pixels: Callable[[torch.Tensor], torch.Tensor] | None = None  # normalised (B, dim) rows
    owner: torch.nn.Module | None = None  # the module behind embed_pixels (for compiling it)
    image_backend: str = "torch-fp32"
    uses_task_types: bool = True  # CLIP has no prefixes: task_type is accepted and ignored

    @property
    def modalities(self) -> list[str]:
        return ["text", "image"] if self.embed_pixels is not None else ["text"]

    def describe(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "owned_by": "latentspace", "kind": self.kind,
                "dimension": self.dim, "space": self.space, "identity": self.identity, "modalities": self.modalities,
                "max_tokens": self.max_tokens,
                **({"image_backend": self.image_backend} if self.embed_pixels is not None else {})}


def _from_text_tower(name: str, spec: str, kind: str, tower: TextTower) -> dict[str, Any]:
    return dict(
        name=name, spec=spec, kind=kind, dim=tower.dim, max_tokens=tower.max_length,
        space=str(tower.space), identity=tower.space.to_dict(),
        embed_texts=lambda texts, task: tower.encode(texts, task, batch_size=max(1, len(texts))),
        token_counts=tower.token_counts, split_long=tower.split_long,
    )


def load_served_model(name: str, spec: str, *, image_backend: Backend = "torch",
                      image_precision: Precision = "fp32") -> ServedModel:
    """Load a model spec (see module docstring), its image forward on `image_backend` (see
    serve/backends.py). Raises ValueError / OSError with a clear message."""
    model = _load(name, spec)
    if model.embed_pixels is not None and (image_backend, image_precision) != ("torch", "fp32"):
        example = torch.stack([model.preprocess_image(Image.new("RGB", (64, 64)))] * 2)
        model.embed_pixels = accelerate(model.embed_pixels, model.owner, example, image_backend, image_precision)
        model.image_backend = f"{image_backend}-{image_precision}"
    return model


def _load(name: str, spec: str) -> ServedModel:
    path = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    if spec.startswith(HF_PREFIX) or is_hf_clip_dir(path):
        clip = HFClipModel(path)
        return ServedModel(
            name=name, spec=spec, kind="hf-clip", dim=clip.dim, max_tokens=clip.max_length,
            space=clip.space, identity={"id": clip.space, "dim": clip.dim}, uses_task_types=False,
            embed_texts=lambda texts, task: clip.embed_texts(texts),
            token_counts=lambda texts, task: [len(ids) for ids in clip.tokenizer(
                texts, truncation=True, max_length=clip.max_length)["input_ids"]],
            split_long=lambda text, task: split_to_fit(clip.tokenizer, text, clip.max_length),
            preprocess_image=clip.preprocess_image,
            embed_pixels=lambda pixels: F.normalize(clip.embed_pixels(pixels), dim=-1), owner=clip.model,
        )
    if spec != BUILTIN_TEXT_MODEL and is_model_dir(spec):
        paired = PairedModel.load(spec)
        return ServedModel(
            **_from_text_tower(name, spec, "latentspace", paired.text),
            preprocess_image=paired.preprocess_image,
            embed_pixels=lambda pixels: F.normalize(paired.embed_pixels(pixels), dim=-1), owner=paired.vision,
        )
    if spec == BUILTIN_TEXT_MODEL or Path(spec).expanduser().is_dir():
        return ServedModel(**_from_text_tower(name, spec, "text", TextTower(TextTowerConfig(path=spec))))
    raise FileNotFoundError(
        f"model {spec!r} not found: give a latentspace model directory, a text model directory, "
        f"{BUILTIN_TEXT_MODEL!r}, or a Hugging Face CLIP directory (hf-clip:DIR)")
