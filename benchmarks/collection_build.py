"""Bulk collection builds: images/s of `build_collection` against (a) the model's raw batched
forward on tensors already preprocessed (no reading or decoding: the ceiling of any pipeline), on
the runtime the build runs (the runtime layer's `auto` choice, and its measured batch size), and
(b) the obvious alternative a user would write (a loop of batched `embed.image` over file paths,
then numpy.save). Same images, same model, same batch size, measured in one run.

    .venv/bin/python benchmarks/collection_build.py [--images 512] [--vit-images 48]
        [--image-size 640x480] [--batch-size N] [--models quickstart vit-b16] [--sources jpeg emoji]

Images are synthetic photo-like JPEGs (gradients, shapes, noise) of --image-size, and (--sources
emoji, with `make demo` run first) OpenMoji PNGs from the emoji corpus. Models:
  quickstart  artifacts/quickstart/model if it exists, else the untrained default config's
              model (a ResNet-10t at 32 px over MiniLM: costs the same as a trained one)
  vit-b16     a randomly initialised Hugging Face CLIP ViT-B/16 (224 px, 86M-parameter tower)
Runs are interleaved and the best of each is compared (the run least disturbed by other work
on a shared machine; medians are printed too). Goals: build >= 0.9x the raw forward where the
forward is the bottleneck, >= 1.5x the alternative. A tiny model is bound by JPEG decoding
instead, so the script also prints the decode-only ceiling (read + decode + preprocess on the
same thread pool, no model). Default run: ~4-5 minutes on 2 cores.
"""

from __future__ import annotations

import os

# As `latentspace collection build` does, before torch loads (see its comment): OpenMP workers
# sleep between ops instead of spinning. The raw forward and the alternative run under the same
# policy, in this same process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_model, matmul_gflops  # noqa: E402  (benchmarks/machine.py)
from PIL import Image, ImageDraw  # noqa: E402


def machine_lines() -> list[str]:
    """The header every collection benchmark prints: what machine the numbers are from."""
    return [
        f"CPU: {cpu_model()} ({platform.machine()})",
        f"torch threads: {torch.get_num_threads()}",
        f"fp32 matmul 2048x2048: {matmul_gflops():.1f} GFLOP/s (best of 5)",
    ]


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: a colour gradient, a few shapes and noise (so JPEG has detail to code)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(count):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = ((xx / w + yy / h) / 2)[..., None]
        pixels = c0 * (1 - t) + c1 * t + rng.normal(0, 12, (h, w, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
            box = (x0, y0, x0 + int(rng.uniform(20, w / 2)), y0 + int(rng.uniform(20, h / 2)))
            fill = tuple(int(c) for c in rng.uniform(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def quickstart_model(work: Path) -> str:
    """A model directory spec: the trained quickstart model, or the untrained default saved."""
    trained = Path("artifacts/quickstart/model")
    from latentspace.models.model_dir import is_model_dir

    if is_model_dir(trained):
        return str(trained)
    from latentspace.config import load_config
    from latentspace.data.transforms import Preprocess
    from latentspace.models.model_dir import save_model_dir
    from latentspace.models.text_tower import TextTower
    from latentspace.models.vision_tower import VisionTower
    from latentspace.quickstart import packaged_config

    print("no model at artifacts/quickstart/model: timing the untrained default config's model")
    cfg = load_config(packaged_config(), ["data.train_shards=unused"])
    text = TextTower(cfg.text)
    vision = VisionTower(cfg.vision, text.dim)
    return str(
        save_model_dir(
            work / "quickstart-untrained",
            vision,
            text=cfg.text,
            space=text.space,
            preprocess=Preprocess(cfg.vision.image_size),
            logit_scale=14.0,
        )
    )


def vit_b16_model(work: Path) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import fakes

    return str(fakes.make_hf_clip(work / "clip-vit-b16", seed=0, **fakes.CLIP_VIT_B16))


def write_emoji(folder: Path, count: int) -> list[Path]:
    """OpenMoji PNGs from the emoji corpus's evaluation shards (`make demo` builds it)."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for shard in sorted(Path("artifacts/emoji/eval/emoji_openmoji_all").glob("test/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".png") and len(paths) < count:
                    path = folder / f"{len(paths):06d}.png"
                    Image.open(io.BytesIO(tar.extractfile(member).read())).save(path)
                    paths.append(path)
    if len(paths) < count:
        raise SystemExit("--sources emoji needs the emoji corpus: run `make demo` first")
    return paths


def time_raw_forward(model, paths: list[Path], batch_size: int) -> float:
    """images/s of finish(image_rows(batch)) on preprocessed tensors."""
    from latentspace.data.images import load_image
    from latentspace.models.embedder import finish

    pixels = torch.stack([model.preprocess_image(load_image(p)) for p in paths])
    with torch.inference_mode():
        finish(model.image_rows(pixels[:batch_size]))  # warm-up
        t = time.perf_counter()
        for i in range(0, len(pixels), batch_size):
            finish(model.image_rows(pixels[i : i + batch_size]))
    return len(paths) / (time.perf_counter() - t)


def time_decode_only(model, paths: list[Path], threads: int) -> float:
    """images/s of read + decode + preprocess on `threads` threads, no model: the other ceiling."""
    from latentspace.data.images import IMAGE_FORMATS, decode_image

    def prepare(path: Path) -> torch.Tensor:
        return model.preprocess_image(decode_image(path.read_bytes(), name=str(path), formats=IMAGE_FORMATS))

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(prepare, paths):
            pass
    return len(paths) / (time.perf_counter() - t)


def time_build(model, folder: Path, work: Path, batch_size: int) -> tuple[float, int]:
    from latentspace.collections import BuildSettings, build_collection

    out = work / "collection"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    # The model on its runtimes, as the raw forward ran it: the build reuses its compiled forward.
    report = build_collection(out, model, folder, settings=BuildSettings(batch_size=batch_size))
    return report.images_embedded / (time.perf_counter() - t), report.images_embedded


def time_alternative(spec: str, paths: list[Path], work: Path, batch_size: int) -> float:
    """What a user writes without collections: batched embed.image over paths, then np.save."""
    from latentspace import embed

    embed.load(spec)  # loaded before timing, as the other two have their model loaded
    t = time.perf_counter()
    vectors = []
    for i in range(0, len(paths), batch_size):
        vectors += embed.image([str(p) for p in paths[i : i + batch_size]], model=spec)["embeddings"]
    np.save(work / "vectors.npy", np.asarray(vectors, dtype=np.float32))
    return len(paths) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512, help="images for the quickstart-sized model")
    ap.add_argument("--vit-images", type=int, default=48, help="images for the ViT-B/16 (slow on 2 cores)")
    ap.add_argument("--image-size", default="640x480")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the runtime's measured one")
    ap.add_argument("--sources", nargs="+", default=["jpeg"], choices=["jpeg", "emoji"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs for the quickstart model (best counts)")
    ap.add_argument("--vit-repeats", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=["quickstart", "vit-b16"], choices=["quickstart", "vit-b16"])
    args = ap.parse_args()
    from latentspace.cli import quiet_libraries
    from latentspace.data.workers import available_cpus
    from latentspace.models.load import load
    from latentspace.runtime import on_runtimes

    quiet_libraries().__enter__()  # for the whole run (the process ends with it)
    for line in machine_lines():
        print(line)
    size = tuple(int(v) for v in args.image_size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="collection-build-bench-"))
    results = []
    try:
        t = time.perf_counter()
        all_paths = write_images(work / "images", max(args.images, args.vit_images), size)  # type: ignore[arg-type]
        print(
            f"{len(all_paths)} JPEGs of {args.image_size} written in {time.perf_counter() - t:.0f} s; "
            f"batch size {args.batch_size}, {available_cpus()} CPUs",
            flush=True,
        )
        emoji = write_emoji(work / "emoji", args.images) if "emoji" in args.sources else []
        for name, source in [(m, s) for m in args.models for s in args.sources if (m, s) != ("vit-b16", "emoji")]:
            count = args.images if name == "quickstart" else args.vit_images
            folder = work / f"images-{name}-{source}"
            folder.mkdir()
            paths = []
            for p in (all_paths if source == "jpeg" else emoji)[:count]:
                (folder / p.name).symlink_to(p)
                paths.append(folder / p.name)
            spec = quickstart_model(work) if name == "quickstart" else vit_b16_model(work)
            model = on_runtimes(load(spec))  # the image forward the build runs: auto's choice
            batch = args.batch_size or model.image_batch_size
            repeats = args.repeats if name == "quickstart" else args.vit_repeats
            runs: dict[str, list[float]] = {"raw": [], "decode1": [], "decode": [], "build": [], "alternative": []}
            for _ in range(repeats):  # interleaved, so load from other work hits all four alike
                runs["raw"].append(time_raw_forward(model, paths, batch))
                runs["decode1"].append(time_decode_only(model, paths, 1))
                runs["decode"].append(time_decode_only(model, paths, max(2, available_cpus())))
                runs["build"].append(time_build(model, folder, work, batch)[0])
                runs["alternative"].append(time_alternative(spec, paths, work, batch))
            best = {k: max(v) for k, v in runs.items()}
            median = {k: statistics.median(v) for k, v in runs.items()}
            print(
                f"\n{name} ({model.kind}, {model.dim}-d) on {model.runtime_names()['image']}, batch {batch}, "
                f"{count} {source} images, {repeats} interleaved run(s); images/s best (median):",
                flush=True,
            )
            labels = {
                "raw": "raw batched forward, preprocessed tensors",
                "decode1": "read+decode+preprocess only, 1 thread",
                "decode": f"read+decode+preprocess only, {max(2, available_cpus())} threads",
                "build": "collection build (everything)",
                "alternative": "alternative (embed.image loop + np.save)",
            }
            for key, label in labels.items():
                print(f"  {label:48s} {best[key]:8.1f} ({median[key]:.1f})")
            ratios = {key: (best["build"] / best[key], median["build"] / median[key]) for key in ("raw", "alternative")}
            # The forward and the decoding each use every core when alone; sharing the cores, an
            # image costs the time of both, so no pipeline beats 1 / (1/raw + 1/decode) here.
            ceiling = 1 / (1 / best["raw"] + 1 / best["decode"])
            print(
                f"  build / raw forward {ratios['raw'][0]:.2f}x ({ratios['raw'][1]:.2f}x); build / shared-CPU "
                f"bound ({ceiling:.0f}/s) {best['build'] / ceiling:.2f}x; build / alternative "
                f"{ratios['alternative'][0]:.2f}x ({ratios['alternative'][1]:.2f}x)",
                flush=True,
            )
            print(
                f"  decoding on {max(2, available_cpus())} threads runs "
                f"{best['decode'] / best['decode1']:.2f}x one thread "
                "(the parallelism this machine gave the pipeline during the run)"
            )
            results.append((f"{name} {source}", ratios["raw"][0], best["build"] / ceiling, ratios["alternative"][0]))
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "best runs: "
        + "; ".join(
            f"{name}: build {r:.2f}x raw forward ({c:.2f}x the bound of forward and decoding sharing the CPU), "
            f"{a:.2f}x the embed.image loop"
            for name, r, c, a in results
        )
    )


if __name__ == "__main__":
    main()
