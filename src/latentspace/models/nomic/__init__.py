"""Nomic Embed models (nomic-embed-text v1/v1.5, nomic-embed-vision) as native PyTorch modules,
loaded strictly from local directories: no `trust_remote_code`, no hub, any transformers version."""

from latentspace.models.nomic.text import (
    NomicBertText,
    NomicTextConfig,
    is_nomic_text_dir,
    load_nomic_text,
    save_nomic_text,
)
from latentspace.models.nomic.tokenizer import load_nomic_tokenizer

__all__ = [
    "NomicBertText",
    "NomicTextConfig",
    "is_nomic_text_dir",
    "load_nomic_text",
    "load_nomic_tokenizer",
    "save_nomic_text",
]
