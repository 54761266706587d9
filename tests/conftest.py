from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # for `import fakes`

from latentspace.config import RunConfig, load_config  # noqa: E402

TINY_VISION = {"arch": "vit_tiny_patch16_224", "image_size": 16, "patch_size": 8, "pool": "mean",
               "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}}


@pytest.fixture(scope="session")
def text_tower():
    from latentspace.config import TextTowerConfig
    from latentspace.models.text_tower import TextTower

    return TextTower(TextTowerConfig())


def tiny_config(out: Path, shards: str, *overrides: str, steps: int = 6, workers: int = 0) -> RunConfig:
    base = {"vision": dict(TINY_VISION), "data": {"train_shards": shards, "workers": workers, "shuffle_buffer": 16}}
    return load_config(None, [
        f"train.output_dir={out / 'run'}", f"train.text_cache_dir={out / 'cache'}", f"train.steps={steps}",
        "train.batch_size=8", "train.checkpoint_every=2", "train.log_every=1", "optim.warmup_steps=1", *overrides,
    ], base=base)
