"""The measurements behind the default config: train each variant for the same number of steps
on the emoji corpus and evaluate zero-shot on the unseen art style. One JSON line per variant.

    latentspace data emoji --out artifacts/emoji
    .venv/bin/python benchmarks/sweep.py --corpus artifacts/emoji --steps 300 [--only r10t32 vit ...]

Every variant is an override list on top of src/latentspace/configs/quickstart.yaml.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentspace.cli import _quiet_libraries
from latentspace.config import load_config
from latentspace.eval.runner import evaluate_suite
from latentspace.models.paired import PairedModel
from latentspace.quickstart import packaged_config
from latentspace.train.loop import train

VIT = ["vision.arch=vit_tiny_patch16_224", "vision.patch_size=8", "vision.model_kwargs={depth: 4}"]
VIT_R = VIT + ["data.caption=random"]
WEAK_AUG = ["data.augment.scale_min=0.8", "data.augment.color_jitter=0.1", "data.augment.hue=0",
                   "data.augment.grayscale=0", "data.augment.rotation=0"]
VARIANTS: dict[str, list[str]] = {
    "vit_random_captions": VIT_R,
    "vit": VIT,
    "vit_random_captions_lr4e-3": VIT_R + ["optim.lr=4e-3"],
    "vit_random_captions_wider_deeper": VIT_R[:2] + ["data.caption=random",
                                                     "vision.model_kwargs={depth: 6, embed_dim: 256, num_heads: 4}"],
    "vit_random_captions_48px": VIT_R + ["vision.image_size=48"],
    "vit_random_captions_strong_aug": VIT_R + ["data.augment.scale_min=0.35", "data.augment.color_jitter=0.5",
                             "data.augment.hue=0.15", "data.augment.grayscale=0.2", "data.augment.rotation=15"],
    "r10t32": [],
    "r10t64": ["vision.image_size=64"],
    "r18_32": ["vision.arch=resnet18"],
    "r10t32_random_captions": ["data.caption=random"],
    "r10t32_weak_aug": WEAK_AUG,
}
TASKS = ["emoji_noto_all", "emoji_noto_heldout", "emoji_twemoji_heldout"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path("artifacts/emoji"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("artifacts/sweep"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    _quiet_libraries()
    corpus = json.loads((args.corpus / "corpus.json").read_text())
    shards = "::".join(str(args.corpus / s) for s in corpus["train_shards"])
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg = load_config(packaged_config(), [f"data.train_shards={shards}", f"train.steps={args.steps}",
                                              f"train.output_dir={args.out / name}",
                                              f"train.text_cache_dir={args.out / 'cache'}", *overrides])
        t = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - t
        report = evaluate_suite(PairedModel.load(result.model_dir), args.corpus / corpus["eval_suite"],
                                progress=False, only=TASKS)
        row = {"name": name, "overrides": overrides, "steps": args.steps, "train_s": round(seconds),
               **{t.name: {k: round(100 * t.metrics[k], 2) for k in ("acc1", "acc5")} for t in report.tasks}}
        print(json.dumps(row), flush=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
