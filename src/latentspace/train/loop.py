"""Locked-text training: the vision tower learns to land where the frozen text tower puts captions.

The text tower runs once per unique caption before training (filling the on-disk cache); the
training step itself is vision forward + lookups + InfoNCE + AdamW.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from latentspace.config import RunConfig, dump_config
from latentspace.data.shards import ImageTextStream, StreamPosition, expand_urls, iter_captions, sample_seed
from latentspace.data.text_cache import TextEmbeddingCache
from latentspace.data.transforms import BatchAugment, Preprocess, load_transform
from latentspace.models.model_dir import save_model_dir
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import VisionTower
from latentspace.space import SpaceIdentity, check_same_space
from latentspace.train.checkpoint import config_differences, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from latentspace.train.loss import LogitScale, contrastive_loss

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


def warmup_cosine(warmup: int, total: int, floor: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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
        with _progress(console) as bar:
            task = bar.add_task("captions", total=len(todo), stats="")
            cache.fill(todo, lambda c: text.encode(c, cfg.text.caption_task),
                       batch_size=cfg.text.batch_size, on_progress=lambda n: bar.advance(task, n))
    console.print(f"text cache: {len(cache)} caption(s) at {cache.dir}")
    return cache


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


class Trainer:
    def __init__(self, cfg: RunConfig, console: Console | None = None):
        self.cfg, self.console = cfg, console or Console(stderr=True)
        self.out = Path(cfg.train.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.urls = expand_urls(cfg.data.train_shards)
        self.text = TextTower(cfg.text)
        self.cache = fill_text_cache(cfg, self.text, self.urls, self.console)
        self.preprocess = Preprocess(cfg.vision.image_size)
        self.augment = BatchAugment(self.preprocess, cfg.data.augment)
        self.vision = VisionTower(cfg.vision, self.text.dim)
        self.scale = LogitScale(cfg.train.init_temperature, cfg.train.max_logit_scale)
        o = cfg.optim
        groups = self.vision.param_groups(o.weight_decay) + [{"params": list(self.scale.parameters()), "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(o.warmup_steps, cfg.train.steps, o.min_lr_ratio))
        self.step = 0
        self.positions: dict[int, StreamPosition] = {}
        self.next_role = 0
        self.resumed_from = self._maybe_resume()

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
            raise RuntimeError(f"{self.checkpoint_path} holds a config this version cannot read ({e}); "
                               "choose a new train.output_dir") from None
        diffs = config_differences(json.loads(json.dumps(saved)), self._config_dict())
        if diffs:
            raise RuntimeError(f"{self.checkpoint_path} was written with a different config ({'; '.join(diffs)}). "
                               "Resume with the same config, or choose a new train.output_dir.")
        # Same config but a text model directory whose contents changed: a different space.
        check_same_space(SpaceIdentity.from_dict(state["space"]), self.text.space, what=f"checkpoint {self.checkpoint_path}")
        self.vision.load_state_dict(state["vision"])
        self.scale.load_state_dict(state["logit_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.positions = {int(k): StreamPosition(**v) for k, v in state["data"]["positions"].items()}
        self.next_role = int(state["data"]["next_role"])
        self._truncate_metrics(self.step)
        self.console.print(f"[bold]resuming[/] {self.out} from step {self.step}")
        return self.step

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines a killed run wrote after its last checkpoint; they will be redone."""
        path = self.out / METRICS_NAME
        if path.exists():
            keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in keep))

    def _save(self) -> None:
        save_checkpoint(self.checkpoint_path, {
            "step": self.step,
            "vision": self.vision.state_dict(),
            "logit_scale": self.scale.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "data": {"positions": {r: asdict(p) for r, p in self.positions.items()}, "next_role": self.next_role},
            "config": self._config_dict(),
            "space": self.text.space.to_dict(),
        })

    def _loader(self) -> DataLoader:
        d = self.cfg.data
        stream = ImageTextStream(
            urls=self.urls, transform=load_transform(self.preprocess), batch_size=self.cfg.train.batch_size,
            seed=self.cfg.train.seed, caption_mode=d.caption, shuffle_buffer=d.shuffle_buffer,
            num_workers=d.workers, positions=self.positions, first_role=self.next_role)
        return DataLoader(stream, batch_size=None, num_workers=d.workers,
                          prefetch_factor=4 if d.workers else None, persistent_workers=False)

    def train_step(self, batch: dict) -> float:
        text_emb = self.cache.lookup(batch["captions"])
        # Augmentation draws from a generator tied to the step, so a resumed run replays it exactly.
        gen = torch.Generator().manual_seed(sample_seed(self.cfg.train.seed, self.step))
        images = self.augment(batch["images"], gen)
        self.vision.train()
        loss = contrastive_loss(self.vision(images), text_emb, self.scale())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.vision.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        role = int(batch["role"])
        self.positions[role] = StreamPosition(**batch["position"])
        self.next_role = (role + 1) % max(1, self.cfg.data.workers)
        return float(loss.detach())

    def run(self) -> TrainResult:
        t = self.cfg.train
        start, t0 = self.step, time.perf_counter()
        window_t, window_n, loss = time.perf_counter(), 0, float("nan")
        with _progress(self.console) as bar, open(self.out / METRICS_NAME, "a") as log:
            task = bar.add_task("train", total=t.steps, completed=self.step, stats="")
            for batch in self._loader():
                if self.step >= t.steps:
                    break
                loss = self.train_step(batch)
                window_n += len(batch["captions"])
                bar.update(task, completed=self.step)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    ips = window_n / max(1e-9, time.perf_counter() - window_t)
                    window_t, window_n = time.perf_counter(), 0
                    record = {"step": self.step, "loss": round(loss, 5), "lr": self.scheduler.get_last_lr()[0],
                              "logit_scale": round(float(self.scale().detach()), 3), "images_per_s": round(ips, 1),
                              "skipped": self.skipped, "time": round(time.time(), 3)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.update(task, stats=f"loss {loss:.3f}  {ips:.0f} img/s")
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self._save()
        if self.step < t.steps:
            raise RuntimeError(f"the data stream ended at step {self.step} of {t.steps}")
        plot_loss_curve(self.out / METRICS_NAME, self.out / "loss.png")
        model_dir = save_model_dir(
            self.out / "model", self.vision, text=self.cfg.text, space=self.text.space, preprocess=self.preprocess,
            logit_scale=float(self.scale().detach()), info={"steps": self.step, "batch_size": t.batch_size,
                                                   "train_shards": self.cfg.data.train_shards})
        return TrainResult(self.out, model_dir, self.step, start, self.skipped, self.shard_errors,
                           time.perf_counter() - t0, loss)

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.positions.values())

    @property
    def shard_errors(self) -> int:
        return sum(p.shard_errors for p in self.positions.values())


def train(cfg: RunConfig, console: Console | None = None) -> TrainResult:
    return Trainer(cfg, console).run()


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
