"""The table of model kinds behind `load`: the forms it documents, the options each kind takes,
and the names models are served under. (Every form loading through every entry point is
tests/test_specs.py.)"""

from __future__ import annotations

import pytest

from latentspace.models.load import KINDS, OPTIONS, SPEC_FORMS, SpecError, classify, default_name, load, spec_forms_help


def test_the_accepted_forms_are_written_from_the_table():
    help_text = spec_forms_help()
    for kind in KINDS:
        assert f"{kind.form} ({kind.doc})" in SPEC_FORMS
        assert kind.doc in help_text and kind.form in help_text
    for option in OPTIONS.values():
        assert option.example in SPEC_FORMS and option.doc in help_text


def test_spelled_forms_need_no_files(tmp_path):
    assert classify("builtin:all-MiniLM-L6-v2")[0].name == "builtin"
    kind, target = classify("open_clip:ViT-B-32:/w/ckpt.pt")
    assert kind.name == "open_clip" and target == ("ViT-B-32", "/w/ckpt.pt")
    kind, target = classify(f"hf-clip:{tmp_path / 'clip'}")
    assert kind.name == "hf-clip" and target == tmp_path / "clip"
    with pytest.raises(SpecError, match="open_clip:ARCH:CHECKPOINT"):
        classify("open_clip:ViT-B-32")


def test_an_option_a_kind_does_not_take_names_the_kinds_that_do(tmp_path):
    takers = "latentspace and nomic-vision models"
    with pytest.raises(SpecError, match=rf"option text= applies to {takers}, not to .*\(builtin\)"):
        load("builtin:all-MiniLM-L6-v2?text=/somewhere")
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(SpecError, match=r"rotary_scaling_factor= applies to builtin and text models, .*\(hf-clip\)"):
        load(f"{tmp_path}?rotary_scaling_factor=2")
    with pytest.raises(SpecError, match="unknown option 'colour'"):
        load(f"{tmp_path}?colour=red")


def test_default_names_read_no_files():
    assert default_name("/models/nomic-embed-vision-v1.5?text=/models/t") == "nomic-embed-vision-v1.5"
    assert default_name("hf-clip:~/clip-b32") == "clip-b32"
    assert default_name("open_clip:ViT-B-32:/w/ckpt.pt") == "ViT-B-32"
    assert default_name("builtin:all-MiniLM-L6-v2") == "builtin:all-MiniLM-L6-v2"
