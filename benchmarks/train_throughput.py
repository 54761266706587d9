"""Training throughput and MFU: latentspace's locked-text step against open_clip's own training
step, same vision model, same batch, same precision, text tower locked in both, in one process.

    .venv/bin/python benchmarks/train_throughput.py                      # cpu-tiny without CUDA
    .venv/bin/python benchmarks/train_throughput.py --preset cpu-tiny --steps 5 --warmup 2
    .venv/bin/python benchmarks/train_throughput.py --preset gpu-vitb16 [--compile] [--json out.json]

latentspace: `VisionTower` forward, caption embeddings looked up in the on-disk `EmbeddingCache`
(filled once, before timing, by the frozen text tower: the text tower never runs in the step),
`contrastive_loss` with `LogitScale`, AdamW. open_clip: a `CustomTextCLIP` made by
`open_clip.create_model` from a config with the same timm vision backbone (`timm_model_name`) and
the MiniLM text tower as an open_clip HF text tower loaded from the local directory, locked with
`lock_text_tower` (LayerNorms too), its `ClipLoss`, AdamW; each step runs the model's image *and*
locked text forward, as open_clip's training loop does. Tokenization happens once, untimed.

Both sides get the same images and captions, the same trainable network (the parameter counts are
printed), the same optimizer settings (AdamW, lr 1e-3, betas (0.9, 0.95), no weight decay; fused
on CUDA for latentspace, PyTorch's default implementation for open_clip, as its trainer builds it),
the same autocast (bf16 on the GPU preset) and TF32 setting; `--compile` compiles both models
(open_clip's trainer has --torchcompile). open_clip pads every caption to its context length; by
default it gets the tightest one for the benchmark captions, the cheapest text forward it can run
(open_clip's own default is 77: `--context-length 77`). A parity check shows that open_clip's text
features equal our cached embeddings. Data loading and augmentation are left out of both.

Each step is timed on its own (synchronised on CUDA); images/s use the median step, which shrugs
off other work on a shared machine; with several --rounds the sides alternate going first. Model
FLOPs of one step (forward + backward, plus open_clip's locked text forward) come from torch's
FlopCounterMode; MFU divides them by the median step time and the peak (--peak-tflops; known for
H100/H200/A100, n/a on CPU unless given). On CUDA without --batch-size, the batch is the largest of
the preset's list at which both sides run without running out of memory.

The last line is the headline ratio. Exit status 2: open_clip could not be measured (the reason is
printed) and only latentspace's step was.
"""

from __future__ import annotations

import os

# Everything is local: never let transformers / huggingface_hub try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import gc
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from latentspace.config import BUILTIN_TEXT_MODEL, TextTowerConfig, VisionTowerConfig
from latentspace.data.embedding_cache import EmbeddingCache
from latentspace.models.backbone import create_backbone
from latentspace.models.text_tower import TextTower, resolve_text_model_path
from latentspace.models.vision_tower import VisionTower
from latentspace.train.flops import count_flops, mfu, peak_tflops
from latentspace.train.loss import LogitScale, contrastive_loss
from latentspace.train.optim import param_groups

# The published recipe's optimizer (docs/design.md): the same settings on both sides.
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.0
EXIT_OPEN_CLIP_MISSING = 2


@dataclass(frozen=True)
class Preset:
    vision: VisionTowerConfig
    batch_sizes: tuple[int, ...]  # one = fixed; several = the largest that fits (CUDA only)
    precision: str  # "fp32" or "bf16" (autocast; weights stay fp32, as in both trainers)
    steps: int
    warmup: int
    goal: float  # the goal for latentspace's images/s over open_clip's


PRESETS: dict[str, Preset] = {
    # The CPU configuration: a small ViT at 32 px, patch 8 (16 patches), width 192, 4 layers.
    "cpu-tiny": Preset(
        vision=VisionTowerConfig(
            arch="vit_tiny_patch16_224",
            image_size=32,
            patch_size=8,
            pool="mean",
            model_kwargs={"depth": 4, "embed_dim": 192, "num_heads": 3},
        ),
        batch_sizes=(256,),
        precision="fp32",
        steps=10,
        warmup=2,
        goal=3.0,
    ),
    # ViT-B/16 at 224 px, random init (weights do not change the cost), bf16 autocast.
    "gpu-vitb16": Preset(
        vision=VisionTowerConfig(arch="vit_base_patch16_224", image_size=224, pool="mean"),
        batch_sizes=(1024, 768, 512, 384, 256, 192, 128),
        precision="bf16",
        steps=20,
        warmup=5,
        goal=1.3,
    ),
}


@dataclass
class Result:
    name: str
    step_seconds: list[float] = field(default_factory=list)
    flops_per_step: int | None = None
    peak_mem_gib: float | None = None
    trainable_params: int = 0

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.step_seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _adamw(params: list, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True if fused else None)


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class LatentspaceStep:
    """latentspace's locked-text step (as train/loop.py runs it, without data loading and augmentation)."""

    name = "latentspace"

    def __init__(
        self,
        vision_cfg: VisionTowerConfig,
        cache: EmbeddingCache,
        device: torch.device,
        precision: str,
        compile_model: bool,
    ):
        self.cache, self.device, self.precision = cache, device, precision
        self.vision = VisionTower(vision_cfg, cache.dim).to(device).train()
        self.scale = LogitScale().to(device)
        # Fused AdamW is our CUDA path; on CPU both sides use PyTorch's default implementation.
        self.optimizer = _adamw(
            param_groups(self.vision, WEIGHT_DECAY) + param_groups(self.scale, WEIGHT_DECAY),
            fused=device.type == "cuda",
        )
        self.forward = torch.compile(self.vision) if compile_model else self.vision
        self.trainable_params = _trainable(self.vision) + _trainable(self.scale)

    def loss(self, images: torch.Tensor, captions: list[str], eager: bool = False) -> torch.Tensor:
        # The cache lookup (hash the captions, gather rows of the memory-mapped file, copy to the
        # device) is part of every step, as in the trainer.
        text_emb = self.cache.lookup(captions).to(self.device, non_blocking=True)
        # As the trainer does: only the encoder runs under autocast; the loss is computed in float32.
        with _autocast(self.device, self.precision):
            image_emb = (self.vision if eager else self.forward)(images)
        return contrastive_loss(image_emb.float(), text_emb.float(), self.scale())

    def step(self, images: torch.Tensor, captions: list[str], eager: bool = False) -> None:
        loss = self.loss(images, captions, eager)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def forward_backward(self, images: torch.Tensor, captions: list[str]) -> None:
        self.loss(images, captions, eager=True).backward()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def _register_timm_backbone(name: str, vision_cfg: VisionTowerConfig) -> None:
    """Make `vision_cfg`'s backbone a timm model called `name`.

    open_clip's timm vision tower (`timm_model_name`) calls `timm.create_model(name)` with no size
    arguments, so a backbone with a non-default image size, patch size or depth has to be a named
    timm model. This entrypoint builds it with latentspace's own `create_backbone`, so both sides
    train exactly the same network; open_clip then adds its pooling ("avg" = mean over patch tokens,
    as ours) and linear projection (no bias, as ours) on top.
    """

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> torch.nn.Module:
        if pretrained:
            raise ValueError("the benchmark backbone has no pretrained weights (random init)")
        return create_backbone(vision_cfg.model_copy(update={"model_kwargs": {**vision_cfg.model_kwargs, **kwargs}}))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    timm.models.register_model(entrypoint)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """open_clip logs warnings about the (intended) absence of CLIP weights; hide them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class OpenClipStep:
    """open_clip's own training step (training/train.py's inner loop, single process)."""

    name = "open_clip"

    def __init__(
        self,
        vision_cfg: VisionTowerConfig,
        text_dir: Path,
        embed_dim: int,
        context_length: int | None,
        captions: list[str],
        device: torch.device,
        precision: str,
        compile_model: bool,
        workdir: Path,
    ):
        # Imported here: a missing or broken open_clip must not stop our side.
        import open_clip
        from open_clip.tokenizer import HFTokenizer

        self.open_clip_version = getattr(open_clip, "__version__", "?")
        self.device, self.precision = device, precision
        # open_clip's HF tokenizer on the text model's own directory. (get_tokenizer("local-dir:...")
        # would look for tokenizer files in the config directory instead of hf_tokenizer_name.)
        self.tokenizer = HFTokenizer(str(text_dir), context_length=context_length or 77)
        if context_length is None:
            # open_clip pads every caption to the context length; by default we give it the tightest
            # one for these captions (the longest caption's tokens), the cheapest text forward it can run.
            self.tokenizer.context_length = max(len(ids) for ids in self.tokenizer.tokenizer(captions)["input_ids"])
        self.context_length = int(self.tokenizer.context_length)
        timm_name = "latentspace_benchmark_backbone"
        _register_timm_backbone(timm_name, vision_cfg)
        model_cfg = {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "timm_model_name": timm_name,
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": "linear",
                "image_size": vision_cfg.image_size,
            },
            "text_cfg": {
                "hf_model_name": str(text_dir),
                "hf_tokenizer_name": str(text_dir),
                "hf_model_pretrained": True,
                # MiniLM's width equals embed_dim, so no projection: the text tower is exactly the frozen
                # model, mean-pooled (sentence-transformers' pooling for all-MiniLM-L6-v2), as ours.
                "hf_proj_type": None,
                "hf_pooler_type": "mean_pooler",
                "context_length": self.context_length,
            },
        }
        # `local-dir:` is open_clip's schema for a model defined by a local open_clip_config.json;
        # with no weights file beside it, the vision tower starts random and the HF text tower loads
        # its pretrained weights from `hf_model_name` (pretrained_text=True).
        model_dir = workdir / "open_clip_model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=1))
        with _quiet_logging():
            self.model = open_clip.create_model(
                f"local-dir:{model_dir}",
                pretrained_image=False,
                pretrained_text=True,
                precision="fp32",
                device=device,
                output_dict=True,
            )
        if type(self.model).__name__ != "CustomTextCLIP":
            raise RuntimeError(f"expected open_clip to build a CustomTextCLIP, got {type(self.model).__name__}")
        # Fully locked, LayerNorms included. (open_clip's CLI default, --lock-text without
        # --lock-text-freeze-layer-norm, leaves the LayerNorms trainable, which makes backward run
        # through the whole text tower: slower for open_clip, so not what we compare against.)
        self.model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        self.model.train()  # open_clip trains in train mode, so the text tower's dropout stays on
        self.loss_fn = open_clip.ClipLoss()
        # open_clip's trainer builds a plain torch.optim.AdamW (PyTorch's default implementation).
        self.optimizer = _adamw([p for p in self.model.parameters() if p.requires_grad], fused=False)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.trainable_params = _trainable(self.model)
        self._tokens: dict[int, torch.Tensor] = {}

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids for `captions`, once per batch size (outside the timed steps)."""
        if len(captions) not in self._tokens:
            self._tokens[len(captions)] = self.tokenizer(captions).to(self.device)
        return self._tokens[len(captions)]

    def loss(self, images: torch.Tensor, captions: list[str], eager: bool = False) -> torch.Tensor:
        tokens = self.tokenize(captions)
        with _autocast(self.device, self.precision):
            out = (self.model if eager else self.forward)(images, tokens)
            return self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])

    def step(self, images: torch.Tensor, captions: list[str], eager: bool = False) -> None:
        loss = self.loss(images, captions, eager)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # as open_clip's train loop does after every step
            self.model.logit_scale.clamp_(0, math.log(100))

    def forward_backward(self, images: torch.Tensor, captions: list[str]) -> None:
        self.loss(images, captions, eager=True).backward()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def text_parity(self, captions: list[str], cache: EmbeddingCache) -> float:
        """Max |difference| between open_clip's text features and our cached caption embeddings:
        shows both sides train against the same text vectors."""
        self.model.eval()
        try:
            ours = cache.lookup(captions).to(self.device)
            theirs = self.model.encode_text(self.tokenize(captions), normalize=True).float()
            return float((ours - theirs).abs().max())
        finally:
            self.model.train()


Side = LatentspaceStep | OpenClipStep


def make_captions(n: int) -> list[str]:
    """Distinct short captions (emoji-corpus-like lengths, ~10-15 tokens)."""
    kinds = ("face", "animal", "plant", "food", "vehicle", "building", "tool", "symbol", "flag", "sport")
    return [f"an emoji of a {kinds[i % len(kinds)]}, concept number {i}" for i in range(n)]


def fill_cache(text_cfg: TextTowerConfig, captions: list[str], device: torch.device, workdir: Path) -> EmbeddingCache:
    """The trainer's text cache, filled once by the frozen text tower (as `fill_text_cache` does)."""
    text = TextTower(text_cfg).to(device)
    task = text_cfg.caption_task
    cache = EmbeddingCache(workdir / "text_cache", text.space, task)
    cache.fill(captions, lambda c: text.encode(c, task))
    text = None  # the tower is no longer needed: free it before the timed steps
    return cache


def _images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or any(
        m in str(e) for m in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
    )


def largest_batch(
    sides: list[Side], candidates: tuple[int, ...], captions: list[str], size: int, device: torch.device
) -> int:
    """The largest candidate batch at which every side runs two full steps without running out of
    memory and without the allocator having to retry (a sign of thrashing near the limit).
    Searched eagerly, so with --compile the compiled models get the batch that fits uncompiled."""
    for batch in candidates:
        oom, retries_before = False, torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
        try:
            images = _images(batch, size, device)
            for side in sides:
                torch.cuda.reset_peak_memory_stats(device)
                for _ in range(2):
                    side.step(images, captions[:batch], eager=True)
                _sync(device)
            retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0) - retries_before
        except RuntimeError as e:  # torch.OutOfMemoryError, or a cuBLAS/cuDNN workspace allocation failing
            if not _is_oom(e):
                raise
            oom = True  # handled outside the except block, so its traceback no longer pins tensors
        images = None
        for side in sides:
            side.zero_grad()
        _free(device)
        if not oom and retries == 0:
            return batch
        print(
            f"  batch {batch}: {'out of memory' if oom else f'{retries} allocator retries'}; trying smaller",
            file=sys.stderr,
        )
    raise RuntimeError(f"none of the batch sizes {candidates} fits on {torch.cuda.get_device_name(device)}")


def time_steps(side: Side, images: torch.Tensor, captions: list[str], steps: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        side.step(images, captions)
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _fmt_ips(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _fmt_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_table(results: list[Result], batch: int, peak: float | None) -> None:
    cols = [
        "side",
        "batch",
        "s/step (median)",
        "s/step (mean)",
        "images/s",
        "GFLOP/step",
        "TFLOP/s",
        "MFU",
        "trainable params",
    ]
    if any(r.peak_mem_gib is not None for r in results):
        cols.append("peak mem GiB")
    rows = []
    for r in results:
        tflops = None if r.flops_per_step is None else r.flops_per_step / r.median_s / 1e12
        row = [
            r.name,
            str(batch),
            f"{r.median_s:.3f}",
            f"{r.mean_s:.3f}",
            f"{batch / r.median_s:.1f}",
            "-" if r.flops_per_step is None else f"{r.flops_per_step / 1e9:.1f}",
            "-" if tflops is None else f"{tflops:.3f}",
            _fmt_mfu(mfu(r.flops_per_step or 0, r.median_s, peak)),
            f"{r.trainable_params / 1e6:.2f}M",
        ]
        if r.peak_mem_gib is not None:
            row.append(f"{r.peak_mem_gib:.1f}")
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="default: gpu-vitb16 with CUDA, cpu-tiny without"
    )
    ap.add_argument("--arch", help="timm architecture (overrides the preset)")
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--patch-size", type=int)
    ap.add_argument(
        "--model-kwargs", type=json.loads, help="JSON timm kwargs, e.g. '{\"depth\": 4}' (replaces the preset's)"
    )
    ap.add_argument("--batch-size", type=int, help="fixed batch (default: the preset's; on CUDA the largest that fits)")
    ap.add_argument("--steps", type=int, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, help="untimed steps per side first (at least 10 by default with --compile)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds, alternating which side goes first")
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument(
        "--context-length",
        type=int,
        help="open_clip's padded caption length (open_clip's own default is 77; "
        "default here: the longest benchmark caption, the cheapest for open_clip)",
    )
    ap.add_argument(
        "--text-model",
        default=BUILTIN_TEXT_MODEL,
        help="frozen text model directory (a BERT-like HF model open_clip's HF tower can load)",
    )
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs; n/a on CPU)")
    ap.add_argument("--device", help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap.parse_args(argv)


@dataclass
class Setup:
    """Everything the run was asked for, resolved against the preset and the device."""

    device: torch.device
    device_name: str
    preset_name: str
    preset: Preset
    vision: VisionTowerConfig
    text: TextTowerConfig
    precision: str
    batch_sizes: tuple[int, ...]
    steps: int
    warmup: int
    peak: float | None


def resolve(args: argparse.Namespace) -> Setup:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset_name = args.preset or ("gpu-vitb16" if device.type == "cuda" else "cpu-tiny")
    preset = PRESETS[preset_name]
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {
        "arch": args.arch,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "model_kwargs": args.model_kwargs,
    }
    vision = preset.vision.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    precision = args.precision or preset.precision
    warmup = args.warmup if args.warmup is not None else preset.warmup
    if args.compile and args.warmup is None:
        # Compiled steps keep getting faster for several calls after the first (kernels finish
        # compiling in the background); measured on CPU: 3.3, 1.2, 0.5, 0.25 s for a 0.04 s step.
        warmup = max(warmup, 10)
    batch_sizes = (args.batch_size,) if args.batch_size else preset.batch_sizes
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device_name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(device_name, precision)
    else:
        batch_sizes = batch_sizes[-1:]  # no memory search off CUDA: the preset's smallest batch
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        peak = args.peak_tflops
    return Setup(
        device,
        device_name,
        preset_name,
        preset,
        vision,
        TextTowerConfig(path=args.text_model),
        precision,
        batch_sizes,
        args.steps or preset.steps,
        warmup,
        peak,
    )


def build_sides(
    setup: Setup, args: argparse.Namespace, captions: list[str], workdir: Path
) -> tuple[list[Side], EmbeddingCache, str | None]:
    """Both steps, or ours alone and the reason open_clip could not be built."""
    cache = fill_cache(setup.text, captions, setup.device, workdir)
    sides: list[Side] = [LatentspaceStep(setup.vision, cache, setup.device, setup.precision, args.compile)]
    text_dir = resolve_text_model_path(setup.text.path)
    try:
        oc = OpenClipStep(
            setup.vision,
            text_dir,
            cache.dim,
            args.context_length,
            captions,
            setup.device,
            setup.precision,
            args.compile,
            workdir,
        )
        parity = oc.text_parity(captions[:64], cache)
    except Exception as e:  # noqa: BLE001 - any failure is reported and the run goes on with our side
        problem = (
            f"open_clip could not build its model or tokenizer with the HF text tower from {text_dir}: "
            f"{type(e).__name__}: {e}"
        )
        print(f"WARNING: {problem}; measuring latentspace only", file=sys.stderr)
        return sides, cache, problem
    print(
        f"open_clip {oc.open_clip_version}: CustomTextCLIP, timm vision tower + HF text tower from {text_dir}, "
        f"text locked, {oc.trainable_params / 1e6:.2f}M trainable parameters (latentspace: "
        f"{sides[0].trainable_params / 1e6:.2f}M), captions padded to {oc.context_length} tokens, "
        f"text features vs our cached embeddings: max |diff| {parity:.1e}"
    )
    if parity > 1e-3:
        print(
            "WARNING: open_clip's text tower does not reproduce our cached caption embeddings "
            "(pooling or normalisation differ), so the two sides train against different targets",
            file=sys.stderr,
        )
    sides.append(oc)
    return sides, cache, None


def measure(
    setup: Setup, sides: list[Side], batch: int, captions: list[str], rounds: int
) -> tuple[dict[str, Result], str | None]:
    """FLOPs of one step, warm-up, then the timed rounds. An open_clip failure here drops its side."""
    device, problem = setup.device, None
    images, batch_captions = _images(batch, setup.vision.image_size, device), captions[:batch]
    results: dict[str, Result] = {}
    for side in list(sides):
        try:
            flops = count_flops(lambda: side.forward_backward(images, batch_captions))
            side.zero_grad()
            for _ in range(setup.warmup):  # includes compilation with --compile
                side.step(images, batch_captions)
        except Exception as e:  # noqa: BLE001
            if side.name != "open_clip":
                raise
            problem = f"open_clip's training step failed at batch {batch}: {type(e).__name__}: {e}"
            print(f"WARNING: {problem}; measuring latentspace only", file=sys.stderr)
            sides.remove(side)
            side.zero_grad()
            _free(device)
            continue
        results[side.name] = Result(side.name, flops_per_step=flops, trainable_params=side.trainable_params)
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            results[side.name].step_seconds += time_steps(side, images, batch_captions, setup.steps, device)
            if device.type == "cuda":
                results[side.name].peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return results, problem


def report(
    setup: Setup, args: argparse.Namespace, results: dict[str, Result], batch: int, open_clip_problem: str | None
) -> str:
    """Print the table and return the headline."""
    print()
    ordered = list(results.values())
    print_table(ordered, batch, setup.peak)
    if any(r.peak_mem_gib is not None for r in ordered):
        print("(peak mem: the most allocated during that side's timed steps, both models resident)")
    peak = setup.peak
    peak_note = (
        f"of {peak:g} TFLOP/s"
        if peak
        else (
            "n/a: unknown GPU; pass --peak-tflops" if setup.device.type == "cuda" else "n/a on CPU; pass --peak-tflops"
        )
    )

    def mfu_of(r: Result) -> str:
        return _fmt_mfu(mfu(r.flops_per_step or 0, r.median_s, peak))

    ours = results["latentspace"]
    summary: dict[str, Any] = {
        "device": setup.device_name,
        "preset": setup.preset_name,
        "vision": setup.vision.model_dump(mode="json"),
        "text_model": setup.text.path,
        "precision": setup.precision,
        "compile": args.compile,
        "batch": batch,
        "peak_tflops": peak,
        "open_clip_problem": open_clip_problem,
        "results": {
            r.name: {
                "images_per_s": batch / r.median_s,
                "median_s": r.median_s,
                "mean_s": r.mean_s,
                "step_seconds": r.step_seconds,
                "flops_per_step": r.flops_per_step,
                "mfu": mfu(r.flops_per_step or 0, r.median_s, peak),
                "peak_mem_gib": r.peak_mem_gib,
            }
            for r in ordered
        },
    }
    if "open_clip" in results:
        theirs = results["open_clip"]
        ratio = summary["ratio"] = theirs.median_s / ours.median_s
        mfus = f"MFU {mfu_of(ours)} vs {mfu_of(theirs)} {peak_note}" if peak else f"MFU {peak_note}"
        print(
            f"issue goal for {setup.preset_name}: >= {setup.preset.goal:g}x open_clip's images/s -> "
            f"{'met' if ratio >= setup.preset.goal else 'NOT met'}"
        )
        headline = (
            f"headline: latentspace {_fmt_ips(batch / ours.median_s)} img/s vs open_clip "
            f"{_fmt_ips(batch / theirs.median_s)} img/s = {ratio:.2f}x ({mfus})"
        )
    else:
        mfus = f"MFU {mfu_of(ours)} {peak_note}" if peak else f"MFU {peak_note}"
        print(f"open_clip not measured: {open_clip_problem}")
        headline = (
            f"headline: latentspace {_fmt_ips(batch / ours.median_s)} img/s ({mfus}); open_clip not measured, no ratio"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return headline


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # load reports and progress bars would bury the table
    hf_logging.disable_progress_bar()
    setup = resolve(args)
    v = setup.vision
    text_name = "all-MiniLM-L6-v2" if setup.text.path == BUILTIN_TEXT_MODEL else Path(setup.text.path).name
    print(f"device: {setup.device_name}; torch {torch.__version__}, timm {timm.__version__}")
    print(
        f"preset {setup.preset_name}: {v.arch} @ {v.image_size}px, patch {v.patch_size or 'default'}, "
        f"{v.model_kwargs or 'default size'}, pool {v.pool}; text tower {text_name} (locked); {setup.precision}"
        f"{' autocast' if setup.precision == 'bf16' else ''}; compile {'on' if args.compile else 'off'}; "
        f"{setup.warmup} warm-up + {setup.steps} timed steps x {args.rounds} round(s)"
    )

    captions = make_captions(max(setup.batch_sizes))
    with tempfile.TemporaryDirectory(prefix="train_throughput-") as tmp:
        sides, _cache, problem = build_sides(setup, args, captions, Path(tmp))
        if len(setup.batch_sizes) > 1:
            print(f"searching the largest batch in {setup.batch_sizes} that fits both sides ...", file=sys.stderr)
            batch = largest_batch(sides, setup.batch_sizes, captions, v.image_size, setup.device)
        else:
            batch = setup.batch_sizes[0]
        results, step_problem = measure(setup, sides, batch, captions, args.rounds)
        headline = report(setup, args, results, batch, problem or step_problem)
    print(headline)
    return 0 if "open_clip" in results else EXIT_OPEN_CLIP_MISSING


if __name__ == "__main__":
    sys.exit(main())
