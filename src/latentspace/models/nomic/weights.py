"""Reading a published model directory (its config.json and its weights), and loading the weights strictly.

Nomic's own loader (like most `from_pretrained` paths) loads with `strict=False`: a checkpoint
whose keys do not match leaves random weights behind with only a log line. Here a mismatch is
an error that names the keys, so a model is either loaded completely or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and what is wrong."""


def read_config(directory: str | Path) -> dict[str, Any]:
    """A directory's config.json as a dict; a CheckpointError naming the file when it is missing,
    unreadable or not a JSON object."""
    path = Path(directory) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing: not a model directory") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a {type(config).__name__}, not an object")
    return config


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory: `model.safetensors`, a sharded safetensors index, or
    `pytorch_model.bin` (read with `weights_only=True`: no pickled code runs)."""
    directory = Path(directory)
    if (directory / SAFETENSORS).is_file():
        return _read_safetensors(directory / SAFETENSORS)
    if (directory / SAFETENSORS_INDEX).is_file():
        index_path = directory / SAFETENSORS_INDEX
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path} is not a valid safetensors index: {e}") from e
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_read_safetensors(directory / shard))
        return state
    if (directory / TORCH_BIN).is_file():
        path = directory / TORCH_BIN
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds; name the file
            raise CheckpointError(f"{path} could not be read ({type(e).__name__}: {e})") from e
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
        return dict(state)
    raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def _listed(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy `state` into `module`, refusing missing keys, unexpected keys and wrong shapes with
    one message that names them (and `source`, the file or directory they came from)."""
    expected = module.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listed(wrong)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the model its config describes; " + "; ".join(problems) + ". Nothing was loaded."
        )
    module.load_state_dict(state, strict=True)
