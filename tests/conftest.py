from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _backend_cache(tmp_path_factory):
    """Image-backend calibrations (serve --image-backend auto) go to a folder of this test run,
    not the user's cache; within the run they are shared, as on a real machine."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


sys.path.insert(0, str(Path(__file__).parent))  # for `import fakes`


@pytest.fixture(scope="session")
def text_tower():
    from latentspace.config import TextTowerConfig
    from latentspace.models.text_tower import TextTower

    return TextTower(TextTowerConfig())


@pytest.fixture(scope="session")
def nomic_models(tmp_path_factory) -> Path:
    """A folder laid out as a user keeps Nomic's published models: tiny random-weight copies of
    nomic-embed-text-v1.5, nomic-embed-vision-v1.5, nomic-embed-text-v1 and nomic-embed-vision-v1
    (32 wide, 32 px, sentence-transformers files and no tokenizer files in the text ones, so the
    packaged bert-base-uncased vocabulary is used)."""
    import fakes_nomic_text
    import fakes_nomic_vision

    root = tmp_path_factory.mktemp("nomic") / "models"
    for seed, version in enumerate(("v1.5", "v1")):
        fakes_nomic_text.write_tiny_nomic_text_dir(
            root / f"nomic-embed-text-{version}", seed=2 * seed, sentence_transformers=True
        )
        fakes_nomic_vision.write_tiny_nomic_vision_dir(root / f"nomic-embed-vision-{version}", seed=2 * seed + 1)
    return root
