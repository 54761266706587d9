"""The one face every model shows to the rest of the system: `Embedder`.

`load(spec)` (models/load.py) turns a spec string into an Embedder; local `embed`, `eval`,
`eval-text`, `check-compat`, `serve`, `ablate` and the quickstart all take it from there, so a
spec means the same thing everywhere and a new model kind is one subclass.

A subclass supplies the model-specific steps:

    text:   tokenize(texts, task_type) -> token ids        (prefix, special tokens, truncation)
            text_rows(ids) -> (N, D) rows                   (one batched forward, pooled)
            split_long(text, task_type) -> pieces           (for long_text_mode="mean")
    image:  preprocess_image(rgb PIL) -> (3, H, W) tensor   (runs per image, on any thread)
            image_rows(pixels) -> (B, D) rows               (one batched forward)

and everything else lives here, once: long-text handling, batching for local calls, Matryoshka
truncation and the final L2 normalisation (`finish`). The server calls the same steps, split
across threads (tokenise and preprocess on the request side, forwards on the model's inference
thread), and finishes the rows with the same functions, so local and served vectors agree.

Transparency: every image reaches `preprocess_image` as RGB with transparent pixels composited
onto white (`data.images.to_rgb`), whatever the model kind. Readers that drop alpha instead turn
transparent pixels black, which makes icons and emoji black silhouettes; one policy everywhere
means a model gives the same vector for the same file through every entry point.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from PIL import Image

from latentspace.inputs import TASK_TYPES, check_texts
from latentspace.space import SpaceIdentity

LongTextMode = Literal["truncate", "mean"]
Modality = Literal["text", "image"]


T = TypeVar("T")


class PerThread(Generic[T]):
    """One copy of an object per thread that uses it. Hugging Face fast tokenizers keep
    truncation and padding settings on the object, so two threads calling one tokenizer at once
    can change them under each other (a ragged batch, a 500 for an innocent request); a copy per
    thread needs no lock. Copies are made on first use; pickling keeps only the original."""

    def __init__(self, original: T):
        self.original = original
        self._local = threading.local()
        self._lock = threading.Lock()

    def get(self) -> T:
        obj = getattr(self._local, "obj", None)
        if obj is None:
            with self._lock:
                obj = copy.deepcopy(self.original)
            self._local.obj = obj
        return obj

    def __getstate__(self) -> dict:
        return {"original": self.original}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["original"])


def length_groups(lengths: Sequence[int], slack: float = 1.5, extra: int = 8) -> list[list[int]]:
    """Indices grouped so that padding to a group's longest member wastes little: sorted by
    length, a group grows while a member is at most `slack` x its shortest (+ `extra` tokens).
    One forward per group instead of one batch padded to its longest text: mixed short and long
    texts no longer pay for each other's padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= slack * lengths[groups[-1][0]] + extra:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


class ModalityError(ValueError):
    """A model asked for a modality it does not embed (e.g. images from a text model)."""


def finish(rows: torch.Tensor, dimensionality: int | None = None) -> torch.Tensor:
    """Matryoshka, then unit length: truncate first, then re-normalise (in that order, as
    nomic-embed-text does). The only place vectors are normalised."""
    if dimensionality is not None:
        if not 1 <= dimensionality <= rows.shape[-1]:
            raise ValueError(f"dimensionality must be between 1 and {rows.shape[-1]}, got {dimensionality}")
        rows = rows[..., :dimensionality]
    return F.normalize(rows.float(), dim=-1)


def split_to_fit(tokenizer, text: str, max_length: int, prefix: str = "") -> list[str]:
    """Split `text` into consecutive pieces that each fit `max_length` tokens once `prefix` and
    the special tokens are added. Pieces are slices of the original text at token boundaries
    (from a fast tokenizer's offsets), so nothing is lost or re-spelled."""
    budget = (
        max_length
        - tokenizer.num_special_tokens_to_add()
        - len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    )
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the prefix")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= budget:
        return [text]
    starts = range(0, len(offsets), budget)
    return [text[offsets[i][0] : offsets[min(i + budget, len(offsets)) - 1][1]] for i in starts]


@dataclass
class PreparedTexts:
    """Texts turned into model inputs: token ids per piece, and how many pieces each text has
    (1 each unless long_text_mode='mean' split a text that did not fit)."""

    ids: list[list[int]]
    pieces_per_text: list[int]

    @property
    def token_count(self) -> int:
        return sum(len(row) for row in self.ids)

    def combine(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows per piece -> one row per text: the mean of a text's pieces (long_text_mode='mean';
        a no-op when every text is one piece). Not yet normalised: `finish` does that."""
        if all(n == 1 for n in self.pieces_per_text):
            return rows
        return torch.stack([chunk.mean(dim=0) for chunk in rows.split(self.pieces_per_text)])


class Embedder:
    """A model that embeds text and/or images into one latent space.

    Subclasses set `kind`, `name`, `identity` and `modalities` and implement the steps of the
    modalities they have (see the module docstring). Rows from `text_rows` / `image_rows` are
    float32 and not normalised; `embed_texts` / `embed_images` return unit rows."""

    kind: str = "?"
    name: str = "?"
    # The spec `load()` opened it from (set by load); what a collection records so that a later
    # build or search can open the same model again. None for a model built another way.
    spec: str | None = None
    identity: SpaceIdentity
    modalities: tuple[Modality, ...] = ()
    max_tokens: int = 0
    pad_id: int = 0  # the token id that pads a batch of ids
    text_batch_size: int = 64  # texts per forward in local calls
    image_batch_size: int = 64  # images per forward in local calls
    # Task types whose prefix changes the vector. Empty: the model has no prefixes, and task_type
    # is accepted and ignored (CLIP).
    task_types: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def space(self) -> str:
        """The latent-space identity as one string: what responses and reports name."""
        return str(self.identity)

    def require(self, modality: Modality) -> None:
        if modality not in self.modalities:
            has = " and ".join("images" if m == "image" else m for m in self.modalities) or "nothing"
            raise ModalityError(
                f"model {self.name!r} is a {self.kind} model: it embeds {has} only, "
                f"not {'images' if modality == 'image' else 'text'}"
            )

    # -- text: model-specific steps --------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], task_type: str) -> list[list[int]]:
        """Token ids per text: task prefix and special tokens added, truncated to max_tokens.
        Safe to call from any thread."""
        self.require("text")
        raise NotImplementedError

    def text_rows(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One batched forward over token ids -> (N, dim) float32 rows, not normalised."""
        self.require("text")
        raise NotImplementedError

    def split_long(self, text: str, task_type: str) -> list[str]:
        """Consecutive pieces of `text` that each fit max_tokens with the task's prefix."""
        self.require("text")
        raise NotImplementedError

    @property
    def text_module(self) -> torch.nn.Module:
        """(input_ids, attention_mask) -> rows as one module, for exporters (a faster text
        runtime in the server). NotImplementedError where the text forward cannot be one
        module; the server then keeps it in PyTorch."""
        self.require("text")
        raise NotImplementedError(f"{self.kind} models run their text forward in PyTorch only")

    def text_rows_by_length(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """`text_rows` over texts of similar length at a time (`length_groups`); rows in input order."""
        groups = length_groups([len(row) for row in ids])
        if len(groups) == 1:
            return self.text_rows(ids)
        out: torch.Tensor | None = None
        for group in groups:
            rows = self.text_rows([ids[i] for i in group])
            if out is None:
                out = rows.new_empty((len(ids), rows.shape[-1]))
            out[group] = rows
        assert out is not None
        return out

    # -- image: model-specific steps -------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> the (3, H, W) float tensor the image forward takes."""
        self.require("image")
        raise NotImplementedError

    def image_rows(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, dim) float32 rows, not normalised."""
        self.require("image")
        raise NotImplementedError

    @property
    def image_module(self) -> torch.nn.Module:
        """The module behind `image_rows` (pixels -> rows), for exporters such as OpenVINO."""
        self.require("image")
        raise NotImplementedError

    # -- shared, written once --------------------------------------------------------------------
    def check_task_type(self, task_type: str) -> str:
        if task_type not in TASK_TYPES:
            raise ValueError(f"unknown task_type {task_type!r}; expected one of {TASK_TYPES}")
        return task_type

    def prepare_texts(
        self, texts: Sequence[str], task_type: str = "search_query", long_text_mode: LongTextMode = "truncate"
    ) -> PreparedTexts:
        """Texts -> token ids, once. long_text_mode='mean' splits a text that does not fit into
        pieces (each embedded, then averaged by `PreparedTexts.combine`)."""
        self.require("text")
        texts = check_texts(texts)
        self.check_task_type(task_type)
        if long_text_mode not in ("truncate", "mean"):
            raise ValueError(f"long_text_mode must be 'truncate' or 'mean', got {long_text_mode!r}")
        if long_text_mode == "mean":
            pieces = [self.split_long(t, task_type) for t in texts]
        else:
            pieces = [[t] for t in texts]
        ids = self.tokenize([p for ps in pieces for p in ps], task_type) if texts else []
        return PreparedTexts(ids, [len(ps) for ps in pieces])

    @torch.inference_mode()
    def embed_texts(
        self,
        texts: Sequence[str],
        task_type: str = "search_query",
        *,
        dimensionality: int | None = None,
        long_text_mode: LongTextMode = "truncate",
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Texts -> (N, dim or dimensionality) unit rows."""
        prepared = self.prepare_texts(texts, task_type, long_text_mode)
        return self.rows_for(prepared, batch_size, dimensionality)

    def rows_for(
        self, prepared: PreparedTexts, batch_size: int | None = None, dimensionality: int | None = None
    ) -> torch.Tensor:
        """Prepared texts -> unit rows, in batches of `batch_size` pieces."""
        ids, batch_size = prepared.ids, batch_size or self.text_batch_size
        if not ids:
            return torch.empty(0, dimensionality or self.dim)
        rows = torch.cat([self.text_rows_by_length(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)])
        return finish(prepared.combine(rows), dimensionality)

    @torch.inference_mode()
    def embed_images(
        self, images: Sequence[Any], *, dimensionality: int | None = None, batch_size: int | None = None
    ) -> torch.Tensor:
        """Paths, bytes or PIL images (any mode) -> (N, dim or dimensionality) unit rows.
        Every input is decoded first, so a bad one fails the call before any forward runs.

        Decoding and preprocessing run on a thread pool (PIL releases the GIL for both), the
        next batches' preprocessing while the current batch's forward runs."""
        from latentspace.data.images import load_image
        from latentspace.data.workers import available_cpus

        self.require("image")
        if isinstance(images, (str, bytes)):
            raise TypeError("images must be a list (wrap a single image in a list)")
        batch_size = batch_size or self.image_batch_size
        if not images:
            return torch.empty(0, dimensionality or self.dim)
        with ThreadPoolExecutor(min(8, max(2, available_cpus())), thread_name_prefix="embed-images") as pool:
            pils = list(pool.map(load_image, images))
            starts = range(0, len(pils), batch_size)
            ahead = deque([pool.submit(self.preprocess_image, p) for p in pils[i : i + batch_size]] for i in starts[:2])
            out = []
            for i in starts:
                batch = ahead.popleft()
                if i + 2 * batch_size < len(pils):  # keep two batches in preparation
                    nxt = i + 2 * batch_size
                    ahead.append([pool.submit(self.preprocess_image, p) for p in pils[nxt : nxt + batch_size]])
                out.append(self.image_rows(torch.stack([f.result() for f in batch])))
        return finish(torch.cat(out), dimensionality)

    # -- what a collection records of how its vectors were made ---------------------------------
    def text_prefix(self, task_type: str) -> str | None:
        """The text put before every text of `task_type` ("" when the model has no prefixes);
        None when the model takes no such task type, or cannot say."""
        self.require("text")
        return "" if not self.task_types else None

    def describe_preprocessing(self) -> dict[str, Any]:
        """The model's own account of its image transform (resize, crop, mean/std), read from the
        transform object; {} when the model cannot describe it. Subclasses override."""
        return {}

    def image_preprocessing(self) -> dict[str, Any]:
        """How an image becomes this model's input: the transform as the model describes it, the
        input shape its preprocessing gives (measured on a blank image), and the transparency
        policy every path shares (`data.images.to_rgb`)."""
        from latentspace.data.images import transparency_policy

        self.require("image")
        described = self.describe_preprocessing() or {"transform": "not described by the model"}
        try:
            shape: list[int] | None = list(self.preprocess_image(Image.new("RGB", (97, 61), "white")).shape)
        except Exception:  # noqa: BLE001 - a model that refuses a blank image: the shape stays unknown
            shape = None
        return {**described, "input_shape": shape, "transparency": transparency_policy()}

    def runtime_names(self) -> dict[str, str]:
        """modality -> the runtime and precision running its forward: a model's own forwards are
        PyTorch fp32 (latentspace.runtime puts them on others)."""
        return {modality: "torch-fp32" for modality in self.modalities}

    def describe(self) -> dict[str, Any]:
        """What `latentspace models SPEC` prints and GET /v1/models reports."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "space": self.space,
            "identity": self.identity.to_dict(),
            "dimension": self.dim,
            "modalities": list(self.modalities),
        }
        if "text" in self.modalities:
            out["max_tokens"] = self.max_tokens
            out["task_types"] = list(self.task_types)
        return out


@runtime_checkable
class Embeds(Protocol):
    """The part of an Embedder that evaluation uses; `eval.prompt_cache.PromptCache` wraps an
    Embedder and offers the same, with text vectors cached on disk."""

    name: str
    space: str

    def embed_texts(self, texts: Sequence[str], task_type: str = "search_query") -> torch.Tensor: ...

    def embed_images(self, images: Sequence[Any]) -> torch.Tensor: ...

    def runtime_names(self) -> dict[str, str]: ...
