"""A recipe's towers as the training step sees them: one *side* per input of the loss.

A side either trains (its module runs in every step, with gradients) or is frozen (the tower ran
once, before training, into an embedding cache, and the step only looks its rows up). `build_sides`
is the one place that reads the recipe (train/recipes.py) and `vision.freeze_backbone`; the Trainer
then runs whatever sides it is given.

    recipe                image side                       text side               third side
    locked_text           the vision tower trains          caption cache           -
    locked_image          frozen vision tower's cache      the text tower trains   -
    both, both+text       the vision tower trains          the text tower trains   -
    three_towers(+text)   the vision tower trains          the text tower trains   third tower's cache

With `vision.freeze_backbone`, a vision side that trains is only the head, run on the backbone's
features, cached once per image; those features and the captions are then read into memory (the
feature table) instead of streamed. The +text recipes add text-only pairs, through the text side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from torch import nn

from latentspace.config import RunConfig, VisionTowerConfig
from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.data.shards import sample_seed
from latentspace.data.text_pairs import TextPairs
from latentspace.data.transforms import BatchAugment, Preprocess
from latentspace.models.model_dir import load_vision
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import PooledBackbone, VisionTower
from latentspace.train.feature_table import FeatureTable
from latentspace.train.frozen import CacheFiller, FrozenImageTower
from latentspace.train.gradcache import Trainable
from latentspace.train.recipes import RecipeSpec


@dataclass(eq=False)
class FrozenSide:
    """A frozen tower, present as its cache: the rows of the batch's `key` field (captions, or the
    sample ids of an image cache)."""

    cache: EmbeddingCache
    key: str
    device: torch.device

    def loss_input(self, batch: dict, step: int) -> torch.Tensor:
        return self.cache.lookup(batch[self.key]).to(self.device)


@dataclass(eq=False)
class TrainedSide:
    """A tower that trains: `module` (the tower, or its head over a frozen backbone) runs in every
    step on what `prepare` makes of the batch. `name` is what the tower's weights and optimizer
    state are saved under; the whole `tower` is saved, restored and given to the optimizer."""

    name: str
    tower: nn.Module
    prepare: Callable[[dict, int], Any]  # (batch, step) -> the module's inputs, on the device
    module: nn.Module | None = None  # None: the whole tower
    task: str | None = None  # a text tower's task type (its forward takes one)
    lr: float | None = None  # its own learning rate; None: optim.lr
    compile: bool = False  # torch.compile it when train.compile
    find_unused: bool = False  # DDP: some parameters take no part (a transformer's pooler)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = self.tower
        # What the step calls, and the module behind it whose gradient sync GradCache defers: the
        # module itself until `run_as` says how this job runs it.
        self.synced: nn.Module = self.module
        self.forward: Callable[..., torch.Tensor] = self.module

    def run_as(self, synced: nn.Module, forward: Callable[..., torch.Tensor]) -> None:
        """From now on the step calls `forward` (the module wrapped in DDP or sharded by FSDP,
        perhaps compiled, under autocast), which runs `synced`."""
        self.synced, self.forward = synced, forward

    def trainable(self, inputs: Any, task: str | None = None) -> Trainable:
        """A loss input: this side's forward on `inputs` (texts of task type `task`)."""
        forward = self.forward
        encoder = forward if task is None else (lambda texts: forward(texts, task))
        return Trainable(encoder, inputs, synced=self.synced)

    def loss_input(self, batch: dict, step: int) -> Trainable:
        self.module.train()  # only the module: a frozen backbone stays in eval mode
        return self.trainable(self.prepare(batch, step), self.task)


Side = FrozenSide | TrainedSide


@dataclass(eq=False)
class Sides:
    """What a recipe trains: its towers, the inputs of its loss, and what feeds them."""

    spec: RecipeSpec
    text: TextTower  # the run's space is its space, trained or frozen
    vision: VisionTower  # the model the run saves, trained or frozen
    preprocess: Preprocess
    loss_sides: list[Side]  # the loss's inputs, in its order: image, text and the third tower's
    pairs: TextPairs | None  # the +text recipes' text-only pairs
    caches: dict[str, EmbeddingCache]  # the frozen towers' caches, by what they hold
    cache_runtimes: dict[str, str]  # the runtime that filled an image cache in this run, by what
    third_dim: int | None  # the third tower's width (the loss's heads project to it)
    table: FeatureTable | None = None  # a frozen backbone's features and captions in memory
    stream_pixels: bool = True  # False: every image embedding comes from a frozen tower's cache
    trained: list[TrainedSide] = field(init=False)

    def __post_init__(self) -> None:
        self.trained = [side for side in self.loss_sides if isinstance(side, TrainedSide)]

    def trains(self, name: str) -> bool:
        return any(side.name == name for side in self.trained)

    def saved_towers(self) -> dict[str, nn.Module]:
        """The towers a checkpoint holds, by name: the vision tower always (it is the model),
        and every tower that trains."""
        return {"vision": self.vision} | {side.name: side.tower for side in self.trained}

    def pair_inputs(self, step: int) -> list[Trainable]:
        """On a text step of a +text recipe, the pairs' queries and positives through the text
        tower; otherwise nothing."""
        if self.pairs is None or not self.pairs.is_text_step(step):
            return []
        queries, positives = self.pairs.batch(step)
        text = next(side for side in self.trained if side.name == "text")
        return [text.trainable(queries, "search_query"), text.trainable(positives, "search_document")]


def build_sides(cfg: RunConfig, filler: CacheFiller, console: Console, device: torch.device) -> Sides:
    """The towers of `cfg`'s recipe, with every frozen cache filled. Everything that can fail on
    bad input (text pairs, towers, pretrained weights) fails here, before any step runs.

    The order matters beyond failing early: the towers draw their initial weights from the
    global RNG (seeded by the caller), so they are made in one fixed order."""
    spec = RecipeSpec.of(cfg.recipe)
    pairs = _text_pairs(cfg, console)
    filled: dict[str, EmbeddingCache] = {}

    text = TextTower(cfg.text)
    text.set_trainable(spec.train_text)
    if spec.train_text:
        text_side: Side = TrainedSide(
            "text",
            text,
            prepare=lambda batch, step: batch["captions"],
            task=cfg.text.caption_task,
            lr=cfg.optim.text_lr,
            find_unused=True,  # the transformer's pooler never runs
        )
    else:
        filled["frozen text tower"] = filler.captions(text)
        text_side = FrozenSide(filled["frozen text tower"], "captions", device)

    vision = VisionTower(cfg.vision, text.dim)
    init_preprocess = load_whole_vision(vision, cfg.vision.init_from) if cfg.vision.init_from else None
    preprocess = vision_preprocess(cfg.vision, vision, init_preprocess)
    table = None
    if not spec.train_vision:
        what = "frozen vision tower"
        frozen = f"recipe {spec.name} freezes the vision tower, so it"
        filled[what] = filler.vision_part(what, vision, preprocess, frozen)
        image_side: Side = FrozenSide(filled[what], "keys", device)
    elif cfg.vision.freeze_backbone:
        # Only the head trains, on features computed once per image and read into memory with
        # their captions: no stream of shards during training.
        what = "frozen backbone"
        frozen = "vision.freeze_backbone trains only the head, so the backbone"
        backbone = PooledBackbone(vision)  # the backbone and pooling, without the head
        filled[what] = filler.vision_part(what, backbone, preprocess, frozen, normalize=False)
        d = cfg.data
        table = FeatureTable.read(filler.urls, filled[what], d.caption, cfg.train.seed, d.shuffle_buffer)
        console.print(f"training the head on {len(table)} feature rows in memory ({table.skipped} samples skipped)")
        image_side = TrainedSide("vision", vision, prepare=_features(device), module=vision.proj, compile=True)
    else:
        augment = BatchAugment(preprocess, cfg.data.augment)
        image_side = TrainedSide("vision", vision, prepare=_augmented(augment, cfg.train.seed, device), compile=True)

    loss_sides = [image_side, text_side]
    third_dim = None
    if spec.third_tower:
        third = FrozenImageTower.from_config(cfg.three_towers, filler.runtime)
        filled["third tower"] = filler.images("third tower", third, cfg.three_towers.cache_dir)
        loss_sides.append(FrozenSide(filled["third tower"], "keys", device))
        third_dim = third.dim
    return Sides(
        spec=spec,
        text=text,
        vision=vision,
        preprocess=preprocess,
        loss_sides=loss_sides,
        pairs=pairs,
        caches=filled,
        cache_runtimes=filler.runtimes,
        third_dim=third_dim,
        table=table,
        stream_pixels=spec.train_vision,
    )


def _augmented(augment: BatchAugment, seed: int, device: torch.device) -> Callable[[dict, int], torch.Tensor]:
    """A batch's images, augmented on the device with a generator seeded by (seed, step), so a
    resumed run replays the same augmentations."""

    def prepare(batch: dict, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sample_seed(seed, step))
        return augment(batch["images"].to(device, non_blocking=True), gen)

    return prepare


def _features(device: torch.device) -> Callable[[dict, int], torch.Tensor]:
    """A batch's backbone features (from the feature table), on the device."""
    return lambda batch, step: batch["features"].to(device)


def _text_pairs(cfg: RunConfig, console: Console) -> TextPairs | None:
    tp = cfg.data.text_pairs
    if tp is None:
        return None
    pairs = TextPairs(tp.path, cfg.train.seed, tp.ratio, tp.batch_size or cfg.train.batch_size)
    console.print(
        f"text pairs: {len(pairs)} from {tp.path} ({pairs.skipped} malformed skipped), on {tp.ratio:.0%} of steps"
    )
    return pairs


def vision_preprocess(cfg: VisionTowerConfig, vision: VisionTower, init: Preprocess | None) -> Preprocess:
    """Input size and normalisation: the config's mean/std if given, else what the starting weights
    were trained with (an init_from model's, the backbone's pretrained config), else 0.5 (scratch)."""
    if cfg.mean is not None or cfg.std is not None:
        if cfg.mean is None or cfg.std is None:
            raise ValueError("set both vision.mean and vision.std, or neither")
        return Preprocess(cfg.image_size, tuple(cfg.mean), tuple(cfg.std))
    if init is not None:
        return Preprocess(cfg.image_size, init.mean, init.std)
    pretrained = vision.normalisation()
    return Preprocess(cfg.image_size, *pretrained) if pretrained else Preprocess(cfg.image_size)


def load_whole_vision(vision: VisionTower, model_dir: str) -> Preprocess:
    """Start `vision` from a saved latentspace model's vision tower (backbone, pooling, projection);
    returns that model's preprocessing."""
    source, config = load_vision(model_dir)
    # Fields that say where weights come from or trade speed for memory don't change the network.
    ignore = {"init_checkpoint", "init_from", "grad_checkpointing", "mean", "std", "freeze_backbone", "head_dropout"}
    mine = {k: v for k, v in vision.saved_config().model_dump(mode="json").items() if k not in ignore}
    theirs = {k: v for k, v in config.vision.model_dump(mode="json").items() if k not in ignore}
    if mine != theirs:
        diffs = [
            f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here"
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)
        ]
        raise ValueError(f"vision.init_from {model_dir} has a different vision tower ({'; '.join(diffs)})")
    if config.space.dim != vision.out_dim:
        raise ValueError(
            f"vision.init_from {model_dir} projects to {config.space.dim} dims, this text tower has {vision.out_dim}"
        )
    vision.load_state_dict(source.state_dict())
    return config.preprocess
