"""nomic-embed-vision as an Embedder (kind "nomic-vision"), in the space of its text model.

A published vision directory holds only the image model; the latent space it lives in is defined
by nomic-embed-text of the same release (vision v1.5 -> text v1.5, v1 -> v1). The vision model
takes the identity of that text model, so image vectors and text vectors name one space and
check-compat passes between the two (and fails against the other release). Its text model is
found, in order:

  1. given explicitly: `VISION_DIR?text=TEXT_DIR` (or `text=` in Python);
  2. a model the caller already loaded (`partners`: the server's other models), of the same release;
  3. a sibling directory named like the vision one with "vision" replaced by "text"
     (models/nomic-embed-vision-v1.5 -> models/nomic-embed-text-v1.5).

With a text model the vision model also embeds text (through that text model, so the vectors are
bit-identical to it). Without one it embeds images only, its space is marked "unpaired", and
check-compat fails: there is nothing to verify the space against.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from latentspace.config import TextTowerConfig
from latentspace.models.embedder import Embedder
from latentspace.models.nomic.preprocess import NomicImagePreprocessor
from latentspace.models.nomic.release import NomicRelease, detect_release
from latentspace.models.nomic.vision import NomicVision
from latentspace.models.nomic.vision_dir import load_nomic_vision
from latentspace.models.text_model import TowerText
from latentspace.models.text_tower import TextTower
from latentspace.space import SpaceIdentity, SpaceMismatchError

log = logging.getLogger(__name__)

UNPAIRED = "unpaired"


class ImageEmbedding(nn.Module):
    """pixels -> token 0 of Nomic's last_hidden_state (the image embedding before normalisation),
    as one module for exporters."""

    def __init__(self, vision: NomicVision):
        super().__init__()
        self.vision = vision

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.vision.trunk(pixels)
        return (h[:, 0] + self.vision.selector(h)[:, 0]).float()


class NomicVisionModel(TowerText, Embedder):
    kind = "nomic-vision"

    def __init__(
        self,
        vision: NomicVision,
        preprocessor: NomicImagePreprocessor,
        *,
        root: Path,
        release: NomicRelease | None,
        text: TextTower | None,
    ):
        self.vision, self.preprocessor, self.root, self.release = vision.eval(), preprocessor, root, release
        self._image = ImageEmbedding(self.vision).eval()
        self.name = release.vision_name if release else root.name
        width = int(vision.config.n_embd)
        if text is None:
            self.modalities = ("image",)
            declared = release.text_name if release else f"text space of {root.name}"
            self.identity = SpaceIdentity(name=declared, fingerprint=UNPAIRED, dim=width)
        else:
            _check_pair(root, release, text, width)
            self._init_text_side(text)
            self.modalities = ("text", "image")
            self.identity = text.space

    @classmethod
    def load(cls, path: str | Path, *, text: str | None = None, partners: Sequence[Embedder] = ()) -> NomicVisionModel:
        root = Path(path).expanduser()
        release = detect_release(root)
        vision = load_nomic_vision(root)
        preprocessor = NomicImagePreprocessor.from_dir(root)
        tower = _find_text(root, release, text, partners)
        if tower is None:
            log.warning(
                "%s: no nomic-embed-text model found for it (give one with ?text=DIR, serve it beside "
                "this model, or put it in a sibling directory): embedding images only, in an unverified "
                "space",
                root,
            )
        return cls(vision, preprocessor, root=root, release=release, text=tower)

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.preprocessor(image)

    def describe_preprocessing(self) -> dict:
        return self.preprocessor.describe()

    @torch.inference_mode()
    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._image(pixels)

    @property
    def image_module(self) -> nn.Module:
        return self._image


def _find_text(
    root: Path, release: NomicRelease | None, text: str | None, partners: Sequence[Embedder]
) -> TextTower | None:
    if text is not None:
        return TextTower(TextTowerConfig(path=text))
    for partner in partners:
        tower = getattr(partner, "text", None)
        if (
            partner.kind == "text"
            and isinstance(tower, TextTower)
            and tower.nomic
            and release is not None
            and tower.release is not None
            and tower.release.version == release.version
        ):
            return tower
    if "vision" in root.name:
        sibling = root.with_name(root.name.replace("vision", "text"))
        from latentspace.models.nomic.text_dir import is_nomic_text_dir

        if sibling.is_dir() and is_nomic_text_dir(sibling):
            return TextTower(TextTowerConfig(path=str(sibling)))
    return None


def _check_pair(root: Path, release: NomicRelease | None, text: TextTower, width: int) -> None:
    """Refuse a text model whose space this vision model was not trained into."""
    if not text.nomic:
        raise SpaceMismatchError(
            f"{root} is a Nomic vision model; its space is defined by nomic-embed-text, "
            f"not by {text.root} ({text.name})"
        )
    if release is not None and text.release is not None and release.version != text.release.version:
        raise SpaceMismatchError(
            f"{release.vision_name} ({root}) lives in {release.text_name}'s latent space, but the text model given "
            f"is {text.release.text_name} ({text.root}): embeddings of the two are not comparable"
        )
    if text.dim != width:
        raise SpaceMismatchError(f"{root} embeds {width}-d vectors but text model {text.root} gives {text.dim}-d ones")
