"""nomic-embed-vision directories: recognising one, reading its weights strictly into the vision
module, and writing one in the published layout (which Nomic's own code reads too)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentspace.models.nomic.preprocess import PREPROCESSOR_CONFIG_NAME, published_preprocessor_config
from latentspace.models.nomic.vision import NomicVision
from latentspace.models.nomic.vision_config import ARCHITECTURE, NomicVisionConfig
from latentspace.models.nomic.weights import (
    CONFIG_NAME,
    SAFETENSORS,
    CheckpointError,
    load_strict,
    read_config,
    read_state_dict,
)


def _names_vision_model(value: Any) -> bool:
    if isinstance(value, str):
        return value == ARCHITECTURE or value.endswith("." + ARCHITECTURE)
    if isinstance(value, (list, tuple)):
        return any(_names_vision_model(v) for v in value)
    return False


def is_nomic_vision_dir(path: str | Path) -> bool:
    """A directory whose config.json declares the Nomic vision model, by `architectures` or by an
    `auto_map` entry naming `...NomicVisionModel`. `model_type` ("nomic_bert") cannot tell: the text
    model has the same one."""
    try:
        config = read_config(path)
    except CheckpointError:
        return False
    if _names_vision_model(config.get("architectures") or []):
        return True
    auto_map = config.get("auto_map")
    return isinstance(auto_map, dict) and any(_names_vision_model(v) for v in auto_map.values())


_PREFIXES = ("vision_model.", "model.", "trunk.")


def _is_derived_buffer(key: str) -> bool:
    """Buffers some writers save although they follow from the config (attention scale, RoPE tables)."""
    parts = key.split(".")
    return parts[-1] in ("norm_factor", "inv_freq", "rope_cos", "rope_sin") or "rope" in parts[:-1]


def normalise_vision_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys -> this module's names: drop derived buffers (`*.norm_factor`, RoPE tables),
    then strip a `vision_model.` / `model.` / `trunk.` prefix when *every* key carries it (training
    checkpoints and some exporters nest the model). Anything else is left for the strict load to name."""
    out = {k: v for k, v in state.items() if not _is_derived_buffer(k)}
    stripped = True
    while stripped and out:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
                break
    return out


def read_vision_config(directory: str | Path) -> NomicVisionConfig:
    """`directory/config.json` -> NomicVisionConfig; errors name the file."""
    raw = read_config(directory)  # a CheckpointError of its own when the file is missing or not JSON
    try:
        return NomicVisionConfig.from_hf_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{Path(directory) / CONFIG_NAME}: {e}") from e


def _uninitialised(config: NomicVisionConfig) -> NomicVision:
    """A CPU module with allocated but unset parameters: every one of them is about to be overwritten
    by a strict load, so running the random initialisers (seconds at full size) would be wasted."""
    with torch.device("meta"):
        module = NomicVision(config)
    module = module.to_empty(device="cpu")
    module.reset_rope_tables()
    return module


def load_nomic_vision(directory: str | Path) -> NomicVision:
    """Load a Nomic vision model directory (config.json + weights) strictly, in eval mode.

    Raises ValueError (for the config) or CheckpointError (for the weights) with one message; no
    partly loaded module is ever returned."""
    directory = Path(directory)
    config = read_vision_config(directory)
    state = normalise_vision_keys(read_state_dict(directory))
    module = _uninitialised(config)
    load_strict(module, state, source=str(directory))
    return module.eval()


def save_nomic_vision(module: NomicVision, directory: str | Path) -> Path:
    """Write `model.safetensors`, `config.json` and `preprocessor_config.json` in the published layout
    (checkpoint key names, float32), so `load_nomic_vision` (and Nomic's own code) reads it back."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(directory / SAFETENSORS), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(module.config.to_hf_dict(), indent=2) + "\n")
    h, w = module.config.img_size
    (directory / PREPROCESSOR_CONFIG_NAME).write_text(json.dumps(published_preprocessor_config(h, w), indent=2) + "\n")
    return directory
