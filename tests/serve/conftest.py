import pytest

import fakes


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory, text_tower):
    """A tiny latentspace model directory the server tests serve."""
    return fakes.save_tiny_model_dir(tmp_path_factory.mktemp("served") / "tiny", text_tower)
