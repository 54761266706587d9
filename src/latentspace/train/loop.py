"""The training loop, for every recipe.

The Trainer gets the recipe's towers as *sides* of the loss (train/sides.py: which tower trains,
which is read from a frozen cache), its batches from the shards or the feature table in memory
(train/batches.py), and checkpoints as it goes, so a killed run resumes exactly: same weights, bit
for bit (train/checkpoint.py, train/positions.py).

In the default, locked-text recipe the text tower runs once per unique caption before training
(filling the on-disk cache) and the step is vision forward + lookups + InfoNCE + AdamW. Other
recipes train the text tower too, add a frozen third image tower (also cached), or mix in
text-only pairs.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from latentspace.config import RunConfig, dump_config
from latentspace.data.shards import expand_urls, sample_seed
from latentspace.data.workers import auto_train_workers
from latentspace.models.model_dir import save_model_dir
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import VisionTower
from latentspace.process_state import as_found, kept_signal_handlers, torch_threads
from latentspace.progress import progress_for, shown
from latentspace.train.batches import from_table, streamed
from latentspace.train.checkpoint import config_dict, read_for_resume, rng_state, save_checkpoint, set_rng_state
from latentspace.train.distributed import (
    average_gradients,
    barrier,
    check_global_batch,
    distribute,
    gather_with_grad,
    init_distributed,
    main_first,
    shutdown,
)
from latentspace.train.frozen import CacheFiller
from latentspace.train.gradcache import Trainable, cached_backward
from latentspace.train.metrics import METRICS_NAME, plot_loss_curve, truncate_metrics
from latentspace.train.optim import param_groups, warmup_cosine_schedule
from latentspace.train.positions import DataPositions
from latentspace.train.recipes import RecipeLoss
from latentspace.train.sharding import (
    clip_grad_norm,
    full_state_dict,
    load_full_state_dict,
    load_optimizer_state_dict,
    optimizer_state_dict,
    whole_copy,
)
from latentspace.train.sides import build_sides

CHECKPOINT_NAME = "checkpoint.pt"


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


class Trainer:
    """One process of a training job. Once made, it holds its towers, filled caches and optimizer,
    and has resumed from the output folder's checkpoint if there is one; `run` then trains to
    train.steps and writes the model. `batches`, `step` and `save` are the loop's moves, for
    callers that drive it themselves."""

    def __init__(self, cfg: RunConfig, console: Console | None = None):
        self.cfg = cfg
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
        # Everything that can fail on bad input (text pairs, towers, caches, checkpoints) is
        # loaded here, before any step runs.
        filler = CacheFiller(cfg, self.urls, self.console, partial(main_first, self.env))
        self.sides = build_sides(cfg, filler, self.console, self.device)
        t, o = cfg.train, cfg.optim
        sides = self.sides
        self.loss_fn = RecipeLoss(sides.spec, sides.text.dim, sides.third_dim, t.init_temperature, t.max_logit_scale)
        for module in (sides.vision, sides.text, self.loss_fn):
            module.to(self.device)
        self._wrap_for_job()
        self.optimizer = self._optimizer()
        self.scheduler = warmup_cosine_schedule(self.optimizer, o.warmup_steps, t.steps, o.min_lr_ratio)
        self.steps_done = 0  # the index of the next step
        self.positions = DataPositions(self.env, self.workers)
        self.resumed_from = self._resume()

    def _wrap_for_job(self) -> None:
        """Say how this job runs each trainable module: under torchrun inside DDP (gradients
        averaged over processes) or sharded in place by FSDP; then torch.compile if asked for,
        and bf16 autocast if asked for."""
        t = self.cfg.train
        bf16 = t.precision == "bf16"
        if t.parallel == "fsdp" and not self.env.is_distributed:
            self.console.print(
                "[yellow]train.parallel fsdp: a single process has nothing to shard over; "
                "training unsharded (launch with torchrun to shard)[/]"
            )
        for side in self.sides.trained:
            synced = distribute(side.module, self.env, t.parallel, bf16=bf16, find_unused=side.find_unused)
            forward = torch.compile(synced) if t.compile and side.compile else synced
            side.run_as(synced, self._autocast(forward))

    def _autocast(self, forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """`forward` under bf16 autocast when train.precision is bf16 (float32 rows out)."""
        if self.cfg.train.precision != "bf16":
            return forward
        device_type = self.device.type

        def run(*inputs):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return forward(*inputs).float()

        return run

    def _optimizer(self) -> torch.optim.AdamW:
        o, t = self.cfg.optim, self.cfg.train
        groups = param_groups(self.loss_fn, o.weight_decay)
        for side in self.sides.trained:
            groups += param_groups(side.tower, o.weight_decay, lr=side.lr)
        # The fused AdamW kernel (CUDA, and CPU since PyTorch 2.4) updates every tensor in one pass:
        # on a 2-core CPU 0.5 ms a step against 3 ms for the default one-tensor-at-a-time loop.
        # FSDP's sharded parameters take the default.
        fused = self.device.type in ("cuda", "cpu") and not (self.env.is_distributed and t.parallel == "fsdp")
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused)

    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose parameters the optimizer holds, by the name their state is saved under."""
        return {"loss": self.loss_fn} | {side.name: side.tower for side in self.sides.trained}

    # -- checkpoints ------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _resume(self) -> int:
        """Continue from the output folder's checkpoint, if there is one; the step it holds (0: a
        new run, whose config is written next to where its checkpoints will be)."""
        if not self.checkpoint_path.exists():
            (self.out / "config.yaml").write_text(dump_config(self.cfg))
            return 0
        state = read_for_resume(self.checkpoint_path, self.cfg, self.sides.text.space)
        for name, tower in self.sides.saved_towers().items():
            load_full_state_dict(tower, state[name])
        self.loss_fn.load_state_dict(state["loss"])
        load_optimizer_state_dict(self._trained_modules(), self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.steps_done = int(state["step"])
        self.positions.restore(state["data"], self.console)
        if self.env.is_main:
            truncate_metrics(self.out / METRICS_NAME, self.steps_done)
        self.console.print(f"[bold]resuming[/] {self.out} from step {self.steps_done}")
        return self.steps_done

    def save(self) -> None:
        """Checkpoint where training stands: everything the next step depends on. Every process
        of a job calls it; rank 0 writes."""
        # Collectives first (every rank calls them): data positions, and whole tensors of
        # anything FSDP sharded; then rank 0 alone writes.
        data = self.positions.gathered()
        towers = {name: full_state_dict(tower) for name, tower in self.sides.saved_towers().items()}
        optimizer = optimizer_state_dict(self._trained_modules(), self.optimizer)
        if not self.env.is_main:
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": self.steps_done,
                **towers,
                "loss": self.loss_fn.state_dict(),
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "data": data,
                "config": config_dict(self.cfg),
                "space": self.sides.text.space.to_dict(),
            },
        )

    # -- the loop ---------------------------------------------------------------------------------

    def batches(self) -> Iterable[dict]:
        """This process's batches from the current step on: from the feature table in memory, or
        streamed from the shards (without pixels when no image side needs them)."""
        sides = self.sides
        if sides.table is not None:
            return from_table(sides.table, self.steps_done, self.cfg.train.batch_size, self.env)
        preprocess = sides.preprocess if sides.stream_pixels else None
        return streamed(self.cfg, self.urls, self.env, self.local_batch, self.workers, self.positions, preprocess)

    def step(self, batch: dict) -> float:
        """One optimizer step on this process's share of the global batch (from `batches`);
        returns the step's loss."""
        step = self.steps_done
        # All randomness of a step (augmentation; dropout and drop-path in the towers) derives from
        # (seed, step), so a resumed run replays it exactly whatever else drew random numbers
        # meanwhile (a DataLoader draws one when it starts iterating, for instance).
        torch.manual_seed(sample_seed(self.cfg.train.seed, step, 1))
        self.optimizer.zero_grad(set_to_none=True)
        # Each input of the loss is a trainable tower's (an encoder and its inputs) or a fixed
        # tensor looked up in a frozen tower's cache.
        inputs = [side.loss_input(batch, step) for side in self.sides.loss_sides]
        loss = self._backward(inputs, lambda i, t, *h: self.loss_fn(i.float(), t.float(), h[0].float() if h else None))
        pairs = self.sides.pair_inputs(step)
        if pairs:
            weight = self.cfg.data.text_pairs.weight
            loss += self._backward(pairs, lambda q, d: weight * self.loss_fn.pairs(q.float(), d.float()))
        # The temperatures and heads live outside DDP (every rank computed the same global loss).
        average_gradients(self.loss_fn.parameters(), self.env)
        if self.cfg.optim.grad_clip:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            clip_grad_norm(params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        self.positions.advance(batch)  # a streamed batch: where its stream stands, for an exact resume
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

    def run(self) -> TrainResult:
        """Train to train.steps (checkpointing every train.checkpoint_every steps and at the end),
        then write the model directory."""
        t = self.cfg.train
        start, t0 = self.steps_done, time.perf_counter()
        window_t, window_n, loss = time.perf_counter(), 0, float("nan")
        log_path = self.out / METRICS_NAME if self.env.is_main else Path(os.devnull)
        # Only rank 0's console prints (the others' are quiet), so one process reports the job.
        steps = progress_for(self.console, what="steps", verb="trained")
        # kept_signal_handlers: the DataLoader's workers leave a SIGCHLD handler, removed once they end.
        with shown(steps, t.steps, done=self.steps_done), open(log_path, "a") as log, kept_signal_handlers():
            for batch in self.batches():
                if self.steps_done >= t.steps:
                    break
                loss = self.step(batch)
                window_n += len(batch["captions"]) * self.env.world_size
                if self.steps_done % t.log_every == 0 or self.steps_done == t.steps:
                    ips = window_n / max(1e-9, time.perf_counter() - window_t)
                    window_t, window_n = time.perf_counter(), 0
                    record = {
                        "step": self.steps_done,
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
                if self.steps_done % t.checkpoint_every == 0 or self.steps_done == t.steps:
                    self.save()
        if self.steps_done < t.steps:
            raise RuntimeError(f"the data stream ended at step {self.steps_done} of {t.steps}")
        model_dir = self._write_model()
        seconds = time.perf_counter() - t0
        return TrainResult(self.out, model_dir, self.steps_done, start, self.skipped, self.shard_errors, seconds, loss)

    def _write_model(self) -> Path:
        """The trained model's directory, written by rank 0 (with the loss curve) while the other
        processes wait."""
        cfg, sides, is_main = self.cfg, self.sides, self.env.is_main
        # Whole copies, on rank 0, of the towers FSDP sharded (a collective).
        vision = whole_copy(sides.vision, lambda: VisionTower(cfg.vision, sides.text.dim), is_main)
        text = whole_copy(sides.text, lambda: TextTower(cfg.text), is_main)
        if not is_main:
            barrier(self.env)  # wait for rank 0 to write the model directory
            return self.out / "model"
        plot_loss_curve(self.out / METRICS_NAME, self.out / "loss.png")
        model_dir = save_model_dir(
            # The text recipe as resolved (layer_norm None -> the model's own), so the directory
            # records what was used even if the text model's directory is later renamed.
            self.out / "model",
            vision,
            text=cfg.text.model_copy(update={"layer_norm": sides.text.layer_norm}),
            space=sides.text.space,
            preprocess=sides.preprocess,
            logit_scale=float(self.loss_fn.scale().detach()),
            info={
                "steps": self.steps_done,
                "batch_size": cfg.train.batch_size,
                "train_shards": cfg.data.train_shards,
                "recipe": sides.spec.name,
                # Where the backbone's weights started (file, sha256, package, licence); None = scratch.
                "init_checkpoint": sides.vision.init_source(),
            },
            trained_text=text if sides.trains("text") else None,
        )
        barrier(self.env)
        return model_dir

    @property
    def n_roles(self) -> int:
        """Data streams in the whole job (train/positions.py)."""
        return self.positions.n_roles

    @property
    def skipped(self) -> int:
        """Samples passed over so far: corrupt or captionless ones the streams skipped, and those
        the feature table left out."""
        table = self.sides.table
        return self.positions.skipped + (table.skipped if table is not None else 0)

    @property
    def shard_errors(self) -> int:
        return self.positions.shard_errors


def train(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    """Train as `cfg` says, on `train.threads` torch threads; the calling process gets back its
    thread count and whatever else the libraries changed on the way (see process_state.as_found:
    torch.compile, for one, leaves an environment variable)."""
    with as_found(), torch_threads(cfg.train.threads):
        try:
            return Trainer(cfg, console).run()
        finally:
            shutdown()  # leave the torchrun process group (a no-op in a single process)
