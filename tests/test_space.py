import pytest
import torch

from latentspace.space import SpaceIdentity, SpaceMismatchError, check_same_space, fingerprint, hash_state_dict


def test_state_dict_hash_depends_on_values_not_order():
    a = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    b = {"b": torch.zeros(2), "w": torch.ones(2, 2)}
    assert hash_state_dict(a) == hash_state_dict(b)
    b["w"] = b["w"].clone()
    b["w"][0, 0] = 1.0001
    assert hash_state_dict(a) != hash_state_dict(b)


def test_scalar_tensors_hash_too():  # e.g. CLIP's logit_scale
    assert hash_state_dict({"s": torch.tensor(2.0)}) != hash_state_dict({"s": torch.tensor(3.0)})


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_mismatch_names_the_differences():
    a = SpaceIdentity("minilm", "aaaa", 384)
    b = SpaceIdentity("minilm", "bbbb", 256)
    check_same_space(a, SpaceIdentity.from_dict(a.to_dict()))
    with pytest.raises(SpaceMismatchError, match="fingerprint: 'aaaa' != 'bbbb'.*dim: 384 != 256"):
        check_same_space(a, b)
