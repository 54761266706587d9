"""Training checkpoints that resume exactly, written atomically.

A checkpoint holds everything the next step depends on: weights, optimizer and scheduler state,
every RNG, and where each data reader stands. It is written to a temporary file, synced, then
renamed over the old one, so a SIGKILL at any instant leaves either the old or the new file.
A run resumes from a checkpoint only if it continues the same training: same config (up to the
fields that change speed, not the maths) and same text space.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentspace import atomic
from latentspace.config import RunConfig
from latentspace.space import SpaceIdentity, check_same_space

# Fields that change speed or memory, not the maths: a run may resume with other values.
RESUMABLE_DIFFERENCES = {
    ("train", "log_every"),
    ("train", "checkpoint_every"),
    ("train", "threads"),
    ("train", "device"),
    ("train", "compile"),
    ("train", "grad_cache_chunk"),
    ("train", "parallel"),
    ("vision", "grad_checkpointing"),
    ("data", "workers"),
}


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path, durable=True) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn or foreign file: say so instead of a pickle traceback
        raise RuntimeError(f"checkpoint {path} cannot be read ({e}); delete it to start over") from e


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Fields whose values differ, ignoring the ones that do not affect training."""
    diffs = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section), current.get(section)
        if not (isinstance(a, dict) and isinstance(b, dict)):  # a top-level value (recipe) or an absent section
            if a != b:
                diffs.append(f"{section}: {a!r} -> {b!r}")
            continue
        for key in sorted(set(a) | set(b)):
            if (section, key) not in RESUMABLE_DIFFERENCES and a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """`cfg` as a checkpoint records it: plain JSON values (tuples as lists)."""
    return json.loads(json.dumps(cfg.model_dump(mode="json")))


def read_for_resume(path: Path, cfg: RunConfig, space: SpaceIdentity) -> dict[str, Any]:
    """The checkpoint at `path`, once it is known to continue the run `cfg` describes, in `space`."""
    state = load_checkpoint(path)
    # Validating the saved config fills in fields added since it was written with their
    # defaults, so a newer version of latentspace can still resume an older run.
    try:
        saved = RunConfig.model_validate(state["config"]).model_dump(mode="json")
    except ValueError as e:
        raise RuntimeError(
            f"{path} holds a config this version cannot read ({e}); choose a new train.output_dir"
        ) from None
    diffs = config_differences(json.loads(json.dumps(saved)), config_dict(cfg))
    if diffs:
        raise RuntimeError(
            f"{path} was written with a different config ({'; '.join(diffs)}). "
            "Resume with the same config, or choose a new train.output_dir."
        )
    # Same config but a text model directory whose contents changed: a different space.
    check_same_space(SpaceIdentity.from_dict(state["space"]), space, what=f"checkpoint {path}")
    return state
