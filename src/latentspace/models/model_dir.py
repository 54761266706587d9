"""Model directories: `config.json` + `model.safetensors`, written atomically.

A directory holds the vision tower only. Its config names the text tower it was trained against
(by path and by latent-space identity), so loading it re-creates the text tower and proves that
it still defines the same space before a single vector is produced.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from safetensors.torch import load_model, save_model

from latentspace.config import TextTowerConfig, VisionTowerConfig
from latentspace.data.transforms import Preprocess
from latentspace.models.vision_tower import VisionTower
from latentspace.space import SpaceIdentity

if TYPE_CHECKING:  # only for the annotation: the text tower imports this module's neighbours
    from latentspace.models.text_tower import TextTower

FORMAT = "latentspace.vision/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelDirConfig(BaseModel):
    """A model directory's config.json, typed: read here and nowhere else."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    format: Literal["latentspace.vision/1"]
    name: str
    space: SpaceIdentity
    text: TextTowerConfig
    vision: VisionTowerConfig
    preprocess: Preprocess
    logit_scale: float
    info: dict[str, Any] = {}

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, value: Any) -> SpaceIdentity:
        return value if isinstance(value, SpaceIdentity) else SpaceIdentity.from_dict(value)

    @field_validator("preprocess", mode="before")
    @classmethod
    def _preprocess(cls, value: Any) -> Preprocess:
        return value if isinstance(value, Preprocess) else Preprocess.from_dict(value)


def save_model_dir(
    path: str | Path,
    vision: VisionTower,
    *,
    text: TextTowerConfig,
    space: SpaceIdentity,
    preprocess: Preprocess,
    logit_scale: float,
    info: dict[str, Any] | None = None,
    trained_text: TextTower | None = None,
) -> Path:
    """Write a model directory atomically (a crash leaves the old one or the new one, never half).

    `trained_text`: a text tower the recipe trained. It is saved inside the directory (as a
    sentence-transformers folder named after the original and the change), the config points at
    it by relative path, and the recorded space is the *new* one read back from those files:
    a trained text tower defines a new latent space."""
    from latentspace.models.text_tower import TextTower

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if trained_text is not None:
            folder = f"{trained_text.name}-{(info or {}).get('recipe', 'tuned')}"
            trained_text.save(tmp / folder)
            space = TextTower(text.model_copy(update={"path": str(tmp / folder)})).space
            text = text.model_copy(update={"path": folder})
        config = {
            "format": FORMAT,
            "name": path.name,
            "space": space.to_dict(),
            "text": text.model_dump(mode="json"),
            "vision": vision.saved_config().model_dump(mode="json"),
            "preprocess": preprocess.to_dict(),
            "logit_scale": float(logit_scale),
            "info": info or {},
        }
        save_model(vision, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def text_path_in(model_dir: str | Path, text_path: str) -> str:
    """A model directory's text tower path: relative paths point inside the directory (a text
    tower the recipe trained); anything else (a directory, builtin:...) is used as it is."""
    inside = Path(model_dir).expanduser() / text_path
    if not Path(text_path).is_absolute() and ":" not in text_path and inside.is_dir():
        return str(inside)
    return text_path


def is_model_dir(path: str | Path) -> bool:
    cfg = Path(path).expanduser() / CONFIG_NAME
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def read_model_config(path: str | Path) -> ModelDirConfig:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a latentspace model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{cfg_path}: format {found!r} is not {FORMAT!r}")
    try:
        return ModelDirConfig.model_validate(raw)
    except ValidationError as e:
        fields = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{cfg_path} is not a valid model config ({fields})") from None


def load_vision(path: str | Path) -> tuple[VisionTower, ModelDirConfig]:
    path = Path(path).expanduser()
    config = read_model_config(path)
    vision = VisionTower(config.vision, config.space.dim)
    missing, unexpected = load_model(vision, str(path / WEIGHTS_NAME), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return vision.eval(), config
