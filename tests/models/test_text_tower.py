import pytest
import torch
import torch.nn.functional as F

# The reference, imported with the module: importing it sets environment variables (scikit-learn,
# which it imports, sets KMP_*), which is its doing, not a test's.
from sentence_transformers import SentenceTransformer

from latentspace.config import TextTowerConfig
from latentspace.models.text_tower import TextTower

import fakes

TEXTS = ["grinning face", "a slice of pizza on a plate", ""]


def test_matches_sentence_transformers(text_tower):
    st = SentenceTransformer(str(text_tower.root), device="cpu")
    ours = text_tower.encode(TEXTS)
    theirs = st.encode(TEXTS, convert_to_tensor=True)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_matryoshka_truncates_then_renormalises(text_tower):
    full = text_tower.encode(TEXTS[:2])
    short = text_tower.encode(TEXTS[:2], dimensionality=64)
    assert short.shape == (2, 64)
    torch.testing.assert_close(short, torch.nn.functional.normalize(full[:, :64], dim=-1))
    with pytest.raises(ValueError, match="at most 384"):
        text_tower.encode(TEXTS, dimensionality=999)


def test_unknown_task_type_is_refused(text_tower):
    with pytest.raises(ValueError, match="task_type"):
        text_tower.encode(["x"], "search_everything")


def test_prefixes_from_model_files_and_identity(tmp_path, text_tower):
    prompts = {"search_query": "search_query: ", "search_document": "search_document: "}
    tower = TextTower(TextTowerConfig(path=str(fakes.minilm_with_prompts(tmp_path, prompts))))
    got = tower.encode(["pizza"], "search_query")
    want = text_tower.encode(["search_query: pizza"], "search_query")
    torch.testing.assert_close(got, want)
    assert tower.space.fingerprint != text_tower.space.fingerprint  # prefixes change the vectors
    with pytest.raises(ValueError, match="defines prefixes"):
        tower.encode(["x"], "clustering")


def test_layer_norm_changes_space_not_shape(text_tower):
    normed = TextTower(TextTowerConfig(layer_norm=True, dimensionality=128))
    plain = TextTower(TextTowerConfig(dimensionality=128))
    got = normed.encode(TEXTS)
    assert got.shape == (3, 128) and normed.space.dim == plain.space.dim == 128
    assert normed.space.fingerprint != plain.space.fingerprint  # another recipe: another space
    # The layer norm runs on the pooled vector at full width, before the Matryoshka cut: the same
    # rows as the plain tower's full-width ones put through it, then truncated and normalised.
    pooled = text_tower.forward_ids(text_tower.token_ids(TEXTS, "search_query"))
    want = F.normalize(F.layer_norm(pooled, (384,))[:, :128], dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # Not the plain tower's vectors: near them (normalising undoes the layer norm's scaling, and
    # only its centring is left) but far above float noise.
    assert (got - plain.encode(TEXTS)).norm(dim=-1).min() > 1e-3


def test_bad_path_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="builtin:all-MiniLM-L6-v2"):
        TextTower(TextTowerConfig(path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        TextTower(TextTowerConfig(path=str(tmp_path / "empty")))
