"""Baseline image-text models behind the same `ImageTextEmbedder` protocol as our own.

Comparing against CLIP only means something when the numbers come from the same harness, the
same tasks and the same image decoding. So baselines are thin adapters: they load a model from a
local path (never a model hub: evaluation must be reproducible offline), convert images with our
own `to_rgb`, and return L2-normalised float32 rows like `PairedModel` does.

`load_embedder` is the single entry point the CLI uses to turn a model spec string into an
embedder, so every command accepts our model directories and baselines alike; `load_text_embedder`
does the same for the text side alone, and also accepts a text model on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from latentspace.data.images import to_rgb
from latentspace.models.protocol import ImageTextEmbedder, TextEmbedder
from latentspace.space import fingerprint, hash_files, hash_state_dict

HF_PREFIX = "hf-clip:"
OPEN_CLIP_PREFIX = "open_clip:"
SPEC_FORMS = (
    "a latentspace model directory; "
    "'hf-clip:DIR' (a Hugging Face CLIP directory; a directory whose config.json has model_type 'clip' "
    "also works without the prefix); "
    "'open_clip:ARCH:CHECKPOINT' (an open_clip architecture name and a local checkpoint file)"
)
# Tokenizer files that change text vectors; they are part of the space identity with the weights.
_HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _normalise(vectors: torch.Tensor) -> torch.Tensor:
    return F.normalize(vectors.float(), dim=-1)


def _embed_in_batches(items: Sequence, batch_size: int, encode: Callable[[list], torch.Tensor], dim: int) -> torch.Tensor:
    """Encode `items` batch by batch and return (N, dim) normalised rows; (0, dim) for no items."""
    out = [_normalise(encode(list(items[i : i + batch_size]))) for i in range(0, len(items), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dim)


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return path


def _features(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; >= 5 returns an output whose
    pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _BatchedEmbedder:
    """The protocol's two methods for a baseline that encodes one batch at a time: subclasses set
    `batch_size` and `dim` and define `_encode_images` / `_encode_texts` (task_type is ignored:
    CLIP models have no prefixes)."""

    batch_size: int
    dim: int

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return _embed_in_batches(images, self.batch_size, self._encode_images, self.dim)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor:
        return _embed_in_batches(texts, self.batch_size, self._encode_texts, self.dim)

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.embed_pixels(torch.stack([self.preprocess_image(to_rgb(img)) for img in images]))

    # The two halves of _encode_images, for callers that batch across requests (the server).
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> the (3, H, W) float tensor the vision tower takes."""
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) rows (not yet normalised)."""
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class HFClipModel(_BatchedEmbedder):
    """A Hugging Face CLIP directory (`CLIPModel.save_pretrained` layout) as an ImageTextEmbedder.

    CLIP has no task prefixes, so `task_type` is accepted and ignored.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 64):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.path = _require_dir(path, "Hugging Face CLIP")
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
            self.processor = CLIPImageProcessor.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path} is not a loadable Hugging Face CLIP directory "
                             f"(needs config.json, weights, preprocessor_config.json and tokenizer files): {e}") from e
        self.batch_size = batch_size
        self.dim = int(self.model.config.projection_dim)
        self.max_length = self._max_text_length()
        self.name = f"hf-clip:{self.path.name}"
        self.space = f"hf-clip:{self.path.name}@{self._fingerprint()}"

    def _max_text_length(self) -> int:
        """Longest token sequence the text tower has position embeddings for."""
        positions = int(self.model.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", positions) or positions
        return min(positions, int(tokenizer_limit))

    def _fingerprint(self) -> str:
        """Weights + tokenizer files: two CLIPs that share a directory name are still two spaces."""
        tokenizer_files = [self.path / f for f in _HF_TOKENIZER_FILES if (self.path / f).is_file()]
        return fingerprint({
            "kind": "hf-clip",
            "weights": hash_state_dict(self.model.state_dict()),
            "tokenizer": hash_files(tokenizer_files),
        })[:12]

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels)).float()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return _features(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))


class OpenClipModel(_BatchedEmbedder):
    """An open_clip architecture with weights from a local checkpoint file, as an ImageTextEmbedder.

    The checkpoint must be a file: a bare tag such as 'openai' would make open_clip download
    weights, which evaluation never does.
    """

    def __init__(self, arch: str, checkpoint: str | Path, *, batch_size: int = 64):
        self.arch, self.checkpoint, self.batch_size = arch, Path(checkpoint).expanduser(), batch_size
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"open_clip checkpoint file not found: {self.checkpoint}")
        self.model, self.transform, self.tokenizer = self._load()
        with torch.inference_mode():
            self.dim = int(self._encode_texts([""]).shape[-1])
        self.name = f"open_clip:{arch}"
        weights = fingerprint({"kind": "open_clip", "arch": arch, "weights": hash_state_dict(self.model.state_dict())})
        self.space = f"open_clip:{arch}@{weights[:12]}"

    def _load(self):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("open_clip baselines need the open_clip_torch package: pip install open_clip_torch") from e
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                self.arch, pretrained=str(self.checkpoint.resolve()), require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(self.arch)
        except Exception as e:  # open_clip raises RuntimeError/KeyError/pickling errors: name the inputs
            raise ValueError(f"could not load open_clip model {self.arch!r} from {self.checkpoint}: {e}") from e
        return model.eval(), transform, tokenizer

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels).float()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts))


def is_hf_clip_dir(path: str | Path) -> bool:
    """True for a directory whose config.json declares a CLIP model (model_type 'clip')."""
    config = Path(path).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == "clip"
    except (OSError, ValueError, AttributeError):
        return False


def load_embedder(spec: str) -> ImageTextEmbedder:
    """Model spec string -> embedder. See SPEC_FORMS for what is accepted."""
    from latentspace.models.model_dir import is_model_dir
    from latentspace.models.paired import PairedModel

    if spec.startswith(HF_PREFIX):
        return HFClipModel(spec[len(HF_PREFIX):])
    if spec.startswith(OPEN_CLIP_PREFIX):
        arch, sep, checkpoint = spec[len(OPEN_CLIP_PREFIX):].partition(":")
        if not (arch and sep and checkpoint):
            raise ValueError(f"bad open_clip spec {spec!r}: expected 'open_clip:ARCH:CHECKPOINT'")
        return OpenClipModel(arch, checkpoint)
    if is_model_dir(spec):
        return PairedModel.load(spec)
    if is_hf_clip_dir(spec):
        return HFClipModel(spec)
    problem = "is neither" if Path(spec).expanduser().exists() else "does not exist and is not"
    raise ValueError(f"unrecognised model {spec!r}: it {problem} a model spec; accepted forms: {SPEC_FORMS}")


class TextModelEmbedder:
    """A text model on its own (`builtin:all-MiniLM-L6-v2` or a sentence-transformers directory) as
    a TextEmbedder: the reference that a model directory's text side is compared against."""

    def __init__(self, tower):
        self.tower = tower
        self.name, self.space = tower.name, str(tower.space)

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor:
        return self.tower.encode(texts, task_type)


def load_text_embedder(spec: str, *, text_path: str | None = None, trust_remote_code: bool = False) -> TextEmbedder:
    """Model spec string -> its text side: any `load_embedder` spec, or a text model alone.

    `text_path` overrides where our model directories load their text tower from (as in eval);
    `trust_remote_code` lets a text model alone run code from its directory (nomic-embed-text).
    """
    from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig
    from latentspace.models.model_dir import is_model_dir
    from latentspace.models.paired import PairedModel
    from latentspace.models.text_tower import TextTower

    if is_model_dir(spec):
        return PairedModel.load(spec, text_path=text_path)
    if spec.startswith((HF_PREFIX, OPEN_CLIP_PREFIX)) or is_hf_clip_dir(spec):
        return load_embedder(spec)
    if spec != BUILTIN_TEXT_MODEL and not (Path(spec).expanduser() / "config.json").is_file():
        raise ValueError(f"unrecognised model {spec!r}: accepted forms: {SPEC_FORMS}; or a text model alone: "
                         f"{BUILTIN_TEXT_MODEL!r} or a sentence-transformers / Hugging Face model directory")
    return TextModelEmbedder(TextTower(TextTowerConfig(path=spec, trust_remote_code=trust_remote_code)))
