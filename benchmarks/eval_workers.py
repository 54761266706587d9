"""Evaluation with images decoded in DataLoader workers versus in the main process: one emoji task,
same model, both settings timed alternately in this process (--repeats runs each, after one warm-up
run that also fills the prompt cache, so the timings cover the image pass). Checks that the results
are identical, and prints the speed-up last: the ratio of medians, and of best runs (the best run is
the one least disturbed by other work on a shared machine).

    .venv/bin/python benchmarks/eval_workers.py [--corpus artifacts/emoji] [--model artifacts/quickstart/model]
        [--task emoji_noto_all] [--workers N] [--repeats 3]

The corpus is built (`latentspace data emoji`) if --corpus holds none. Without a trained model
directory at --model, an untrained default model is used: decoding and the forward pass cost the same.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from latentspace.cli import quiet_libraries
from latentspace.config import load_config
from latentspace.data.emoji import build_emoji_corpus
from latentspace.data.transforms import Preprocess
from latentspace.eval.loader import default_workers
from latentspace.eval.prompt_cache import PromptCache
from latentspace.eval.runner import evaluate_task
from latentspace.eval.tasks import load_suite
from latentspace.models.model_dir import is_model_dir
from latentspace.models.paired import PairedModel
from latentspace.models.text_tower import TextTower
from latentspace.models.vision_tower import VisionTower
from latentspace.quickstart import packaged_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path("artifacts/emoji"))
    ap.add_argument("--npm-cache", type=Path, default=Path("artifacts/cache/npm"))
    ap.add_argument("--model", type=Path, default=Path("artifacts/quickstart/model"))
    ap.add_argument("--task", default="emoji_noto_all")
    ap.add_argument("--workers", type=int, default=max(1, default_workers()))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    quiet_libraries()

    corpus = build_emoji_corpus(args.corpus, cache_dir=args.npm_cache, progress=print)
    _, specs, task_root = load_suite(Path(corpus["out_dir"]) / corpus["eval_suite"])
    spec = next(s for s in specs if s.name == args.task)
    model = PromptCache(_model(args.model), tempfile.mkdtemp(prefix="eval-workers-prompts-"))

    def run(workers: int):
        start = time.perf_counter()
        result = evaluate_task(
            model, task_root / spec.name, spec, batch_size=args.batch_size, progress=False, workers=workers
        )
        return time.perf_counter() - start, result

    _, reference = run(0)  # warm-up: fills the prompt cache and the page cache
    seconds: dict[int, list[float]] = {0: [], args.workers: []}
    for _ in range(args.repeats):
        for workers in seconds:
            elapsed, result = run(workers)
            if (result.metrics, result.n_samples, result.skipped_reasons) != (
                reference.metrics,
                reference.n_samples,
                reference.skipped_reasons,
            ):
                raise SystemExit(f"results differ with {workers} workers: {result} vs {reference}")
            seconds[workers].append(elapsed)

    n = reference.n_samples
    print(
        f"task {spec.name}: {n} images, batch {args.batch_size}, model {model.name}, "
        f"torch threads {torch.get_num_threads()}; results identical in every run"
    )
    for workers, times in seconds.items():
        median = statistics.median(times)
        print(
            f"{workers} workers: median {median:.2f} s ({n / median:.0f} images/s), best {min(times):.2f} s, "
            f"runs {[round(t, 2) for t in times]}"
        )
    median_ratio = statistics.median(seconds[0]) / statistics.median(seconds[args.workers])
    best_ratio = min(seconds[0]) / min(seconds[args.workers])
    print(
        f"speed-up from {args.workers} decoding workers over in-process decoding: "
        f"{median_ratio:.2f}x (medians), {best_ratio:.2f}x (best runs)"
    )


def _model(path: Path) -> PairedModel:
    if is_model_dir(path):
        return PairedModel.load(path)
    print(f"no model directory at {path}: timing an untrained default model")
    cfg = load_config(packaged_config(), ["data.train_shards=unused"])
    text = TextTower(cfg.text)
    return PairedModel(VisionTower(cfg.vision, text.dim), text, Preprocess(cfg.vision.image_size), "untrained")


if __name__ == "__main__":
    main()
