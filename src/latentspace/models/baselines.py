"""CLIP baselines as Embedders: a Hugging Face CLIP directory and an open_clip checkpoint.

Comparing against CLIP only means something when the numbers come from the same harness, the
same tasks and the same image decoding. So baselines are thin adapters: they load a model from a
local path (never a model hub: evaluation must be reproducible offline), see images as our own
`to_rgb` makes them (transparency on white), and fill in the Embedder's steps; batching,
normalisation and Matryoshka truncation come from `Embedder` like for every other kind. CLIP has
no task prefixes: task_type is accepted and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from latentspace.models.embedder import Embedder, PerThread, split_to_fit
from latentspace.models.text_tower import pad_ids
from latentspace.space import SpaceIdentity, fingerprint, hash_files, hash_state_dict

# Tokenizer files that change text vectors; they are part of the space identity with the weights.
_HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return path


def _features(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; >= 5 returns an output whose
    pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _TextForward(torch.nn.Module):
    """(input_ids, attention_mask) -> CLIP text features, as one module for exporters."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)).float()


class _ImageForward(torch.nn.Module):
    """pixels -> rows as one module (what exporters need), for models whose image forward is a
    method of a bigger model."""

    def __init__(self, model: torch.nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(getattr(self.model, self.method)(pixels)).float()


class HFClipModel(Embedder):
    """A Hugging Face CLIP directory (`CLIPModel.save_pretrained` layout)."""

    kind = "hf-clip"
    modalities = ("text", "image")

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.path = _require_dir(path, "Hugging Face CLIP")
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
            self.processor = CLIPImageProcessor.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{self.path} is not a loadable Hugging Face CLIP directory "
                f"(needs config.json, weights, preprocessor_config.json and tokenizer files): {e}"
            ) from e
        self._tokenizers = PerThread(self.tokenizer)  # a copy per thread: it keeps per-object state
        self.max_tokens = self._max_text_length()
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.name = f"hf-clip:{self.path.name}"
        self.identity = SpaceIdentity(
            name=self.name, fingerprint=self._fingerprint(), dim=int(self.model.config.projection_dim)
        )
        self._image = _ImageForward(self.model, "get_image_features").eval()
        self._text = _TextForward(self.model).eval()

    def _max_text_length(self) -> int:
        """Longest token sequence the text tower has position embeddings for."""
        positions = int(self.model.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", positions) or positions
        return min(positions, int(tokenizer_limit))

    def _fingerprint(self) -> str:
        """Weights + tokenizer files: two CLIPs that share a directory name are still two spaces."""
        tokenizer_files = [self.path / f for f in _HF_TOKENIZER_FILES if (self.path / f).is_file()]
        return fingerprint(
            {
                "kind": "hf-clip",
                "weights": hash_state_dict(self.model.state_dict()),
                "tokenizer": hash_files(tokenizer_files),
            }
        )[:12]

    def tokenize(self, texts: Sequence[str], task_type: str) -> list[list[int]]:
        return self._tokenizers.get()(
            list(texts), truncation=True, max_length=self.max_tokens, return_attention_mask=False
        )["input_ids"]

    @torch.inference_mode()
    def text_rows(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.text_module(*pad_ids(ids, self.pad_id))

    @property
    def text_module(self) -> torch.nn.Module:
        return self._text

    def split_long(self, text: str, task_type: str) -> list[str]:
        return split_to_fit(self._tokenizers.get(), text, self.max_tokens)

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def describe_preprocessing(self) -> dict:
        """The CLIP image processor's own settings."""
        p = self.processor
        resample = getattr(p, "resample", None)
        out: dict = {"steps": [type(p).__name__], "resize": {"size": _size(p.size), "interpolation": str(resample)}}
        if getattr(p, "do_center_crop", False):
            out["crop"] = _size(p.crop_size)
        if getattr(p, "do_normalize", True):
            out["mean"], out["std"] = [float(v) for v in p.image_mean], [float(v) for v in p.image_std]
        return out

    @torch.inference_mode()
    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._image(pixels)

    @property
    def image_module(self) -> torch.nn.Module:
        return self._image


class OpenClipModel(Embedder):
    """An open_clip architecture with weights from a local checkpoint file.

    The checkpoint must be a file: a bare tag such as 'openai' would make open_clip download
    weights, which latentspace never does.
    """

    kind = "open_clip"
    modalities = ("text", "image")

    def __init__(self, arch: str, checkpoint: str | Path):
        self.arch, self.checkpoint = arch, Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint file not found: {self.checkpoint}")
        self.model, self.transform, self.tokenizer = self._load()
        self.context_length = int(getattr(self.model, "context_length", 0) or self.tokenizer(["x"]).shape[-1])
        self.max_tokens = self.context_length
        self._image = _ImageForward(self.model, "encode_image").eval()
        with torch.inference_mode():
            dim = int(self.text_rows(self.tokenize([""], "search_query")).shape[-1])
        self.name = f"open_clip:{arch}"
        weights = fingerprint({"kind": "open_clip", "arch": arch, "weights": hash_state_dict(self.model.state_dict())})
        self.identity = SpaceIdentity(name=self.name, fingerprint=weights[:12], dim=dim)

    def _load(self):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError(
                "open_clip baselines need the open_clip_torch package: pip install 'latentspace[baselines]'"
            ) from e
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                self.arch, pretrained=str(self.checkpoint.resolve()), require_pretrained=True
            )
            tokenizer = open_clip.get_tokenizer(self.arch)
        except Exception as e:  # open_clip raises RuntimeError/KeyError/pickling errors: name the inputs
            raise ValueError(f"could not load open_clip model {self.arch!r} from {self.checkpoint}: {e}") from e
        return model.eval(), transform, tokenizer

    def tokenize(self, texts: Sequence[str], task_type: str) -> list[list[int]]:
        """open_clip's tokenizer pads every text to the context length with 0 after its end token;
        the ids here stop at the last non-pad token."""
        rows = self.tokenizer(list(texts)).tolist()
        out = []
        for row in rows:
            end = len(row)
            while end > 1 and row[end - 1] == 0:
                end -= 1
            out.append(row[:end])
        return out

    @torch.inference_mode()
    def text_rows(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        tokens = torch.zeros((len(ids), self.context_length), dtype=torch.long)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return self.model.encode_text(tokens).float()

    def split_long(self, text: str, task_type: str) -> list[str]:
        raise ValueError(
            "long_text_mode='mean' is not available for open_clip models (their tokenizer gives no "
            "offsets to split at); use long_text_mode='truncate'"
        )

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def describe_preprocessing(self) -> dict:
        from latentspace.data.transforms import describe_transform

        return describe_transform(self.transform)

    @torch.inference_mode()
    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._image(pixels)

    @property
    def image_module(self) -> torch.nn.Module:
        return self._image


def _size(value):
    """A processor's size setting (an int, a dict, or transformers 5's SizeDict) as plain JSON."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {str(k): int(v) for k, v in items if isinstance(v, (int, float))}


def is_hf_clip_dir(path: str | Path) -> bool:
    """True for a directory whose config.json declares a CLIP model (model_type 'clip')."""
    config = Path(path).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == "clip"
    except (OSError, ValueError, AttributeError):
        return False
