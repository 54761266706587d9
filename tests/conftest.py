from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # for `import fakes`


@pytest.fixture(scope="session")
def text_tower():
    from latentspace.config import TextTowerConfig
    from latentspace.models.text_tower import TextTower

    return TextTower(TextTowerConfig())
