"""The default model end to end in local mode: `embed.image` over emoji PNG files (read, decoded,
preprocessed, embedded on the runtime layer's choice) against a plain eager PyTorch forward of the
same backbone (timm, default memory format, batch 64, random pixels of the model's size: what a
user's own loop would run, and what latentspace ran before the runtime layer, 1.1x of it).

    .venv/bin/python benchmarks/embed_images.py [--model artifacts/quickstart/model] [--images 768]

Needs `make demo` first (the model and the emoji corpus: the PNGs are OpenMoji's, written from the
evaluation shards). Both sides run alternately, three rounds, best of each. The first `embed.image`
call measures the runtimes (cached afterwards) and is not timed. Prints the machine first and the
ratio last (goal: at least 3).
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import timm
import torch
from machine import describe  # benchmarks/machine.py
from PIL import Image

from latentspace import embed


def write_pngs(shards: list[Path], folder: Path, count: int) -> list[Path]:
    paths: list[Path] = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.name.endswith((".png", ".webp", ".jpg")) or len(paths) == count:
                    continue
                image = Image.open(io.BytesIO(tar.extractfile(member).read()))
                path = folder / f"{len(paths):05d}.png"
                image.save(path)
                paths.append(path)
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} images in {shards}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="artifacts/quickstart/model")
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--tasks", default="artifacts/emoji/eval/emoji_openmoji_all")
    args = parser.parse_args()
    print(describe())
    shards = sorted(Path(args.tasks).glob("**/*.tar"))
    folder = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    paths = [str(p) for p in write_pngs(shards, folder, args.images)]
    model = embed.load(args.model)
    size = model.preprocess_image(Image.new("RGB", (64, 64))).shape[-1]
    plain = timm.create_model(model.vision.cfg.arch, pretrained=False, num_classes=0).eval()
    pixels = torch.randn(64, 3, size, size)

    def eager() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(paths), 64):
                plain(pixels[: min(64, len(paths) - i)])
        return len(paths) / (time.perf_counter() - started)

    def ours() -> float:
        started = time.perf_counter()
        embed.image(paths, model=args.model)
        return len(paths) / (time.perf_counter() - started)

    first = embed.image(paths[:8], model=args.model)  # measures the runtimes (or reads the cache)
    rounds = [(eager(), ours()) for _ in range(3)]
    best_eager, best_ours = max(r[0] for r in rounds), max(r[1] for r in rounds)
    print(f"images: {len(paths)} OpenMoji PNGs ({size} px model input); runtime: {first['runtime']}")
    print(f"plain eager timm forward ({model.vision.cfg.arch}, batch 64, random pixels): {best_eager:.1f} images/s")
    print(f"embed.image over the files (read, decode, preprocess, embed): {best_ours:.1f} images/s")
    print(f"embed.image / plain eager forward: {best_ours / best_eager:.2f}x")


if __name__ == "__main__":
    main()
