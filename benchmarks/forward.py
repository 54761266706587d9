"""Every forward on every runtime, as a fraction of what the machine can do.

For five models — the quickstart's default image model (EfficientNet-Lite0 at 160 px with its MLP
head), a CLIP ViT-B/16 image tower, Nomic Embed Vision v1.5's shapes, all-MiniLM-L6-v2 and
Nomic Embed Text v1.5's shapes (random weights where the real ones are not on disk; speed does
not depend on them) — the runtime layer's own measurement (`latentspace.runtime.calibrate`, what
`auto` runs): items/s on each runtime and precision, the cosine to PyTorch fp32, and which one
`auto` takes. Beside each: model FLOPs per item (PyTorch's FlopCounterMode: matmuls, convolutions,
attention) and the share of the machine's measured peak in that precision (fp32 matmul; bf16
matmul where the CPU has native bf16; int8 matmul where it has VNNI).

    .venv/bin/python benchmarks/forward.py [--models default,vit-b16,nomic-vision,minilm,nomic-text]

Prints the machine first and the headline last: ViT-B/16's share of peak in the precision auto
chose (goal: at least 0.6).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_flags, describe  # benchmarks/machine.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's model fakes

from latentspace.runtime import CANDIDATES, calibrate, probe_images, probe_text_inputs  # noqa: E402
from latentspace.train.flops import count_flops  # noqa: E402


def _rate(run, flops: float, repeats: int = 5) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


def peaks() -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of a 2048x2048 matmul in each precision the CPU runs natively."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"fp32": _rate(lambda: a @ b, 2 * n**3)}
    flags = set(cpu_flags())
    if {"avx512_bf16", "amx_bf16"} & flags:
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bf16"] = _rate(lambda: a16 @ b16, 2 * n**3)
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        a8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b8 = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        try:
            out["int8"] = _rate(lambda: torch._int_mm(a8, b8), 2 * n**3)
        except RuntimeError:  # no CPU kernel for int8 matmul in this torch
            pass
    return out


def default_model():
    import yaml

    from latentspace.config import VisionTowerConfig
    from latentspace.models.vision_tower import VisionTower

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "src/latentspace/configs/quickstart.yaml").read_text()
    )
    tower = VisionTower(VisionTowerConfig(**config["vision"]), 384).eval()
    size = tower.cfg.image_size
    return tower, lambda: probe_images(_resize_to(size), n=8)


def _resize_to(size: int):
    import torchvision.transforms.v2 as T

    to = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])
    return lambda image: to(image.convert("RGB"))


def vit_b16():
    import timm

    model = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512).eval()
    return model, lambda: probe_images(_resize_to(224), n=8)


def nomic_vision():
    from latentspace.models.load import load

    import fakes_nomic_vision

    root = Path(tempfile.mkdtemp(prefix="bench-nomic-vision-"))
    fakes_nomic_vision.write_tiny_nomic_vision_dir(
        root / "nomic-embed-vision-v1.5", img_size=224, patch_size=16, hidden=768, layers=12, heads=12
    )
    model = load(str(root / "nomic-embed-vision-v1.5"))
    return model.image_module, lambda: probe_images(model.preprocess_image, n=8)


def minilm():
    from latentspace.models.load import load

    model = load("builtin:all-MiniLM-L6-v2")
    return model.text_module, lambda: probe_text_inputs(model.tokenize, model.pad_id)


def nomic_text():
    from latentspace.models.load import load

    import fakes_nomic_text

    root = Path(tempfile.mkdtemp(prefix="bench-nomic-text-"))
    fakes_nomic_text.write_tiny_nomic_text_dir(
        root / "nomic-embed-text-v1.5", hidden=768, layers=12, heads=12, inner=3072, tokenizer=True
    )
    model = load(str(root / "nomic-embed-text-v1.5"))
    return model.text_module, lambda: probe_text_inputs(model.tokenize, model.pad_id)


MODELS = {
    "default": ("default image model (Lite0 160 px + MLP head)", default_model),
    "vit-b16": ("CLIP ViT-B/16 image tower", vit_b16),
    "nomic-vision": ("Nomic Embed Vision v1.5 shapes", nomic_vision),
    "minilm": ("all-MiniLM-L6-v2 text", minilm),
    "nomic-text": ("Nomic Embed Text v1.5 shapes", nomic_text),
}


def precision_peak(peak: dict[str, float], precision: str) -> tuple[str, float]:
    """The peak a forward at `precision` is measured against (fp32's where the CPU has no native one)."""
    return (precision, peak[precision]) if precision in peak else ("fp32", peak["fp32"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    print(describe())
    peak = peaks()
    print("peaks: " + ", ".join(f"{p} {v:.0f} G{'OP' if p == 'int8' else 'FLOP'}/s" for p, v in peak.items()))
    headline = None
    for key in args.models.split(","):
        title, build = MODELS[key]
        module, probe_of = build()
        probe = probe_of()
        inputs = probe if isinstance(probe, tuple) else (probe,)
        # FLOPs per item over the whole probe: a text probe's items differ in length
        module.requires_grad_(False)  # FlopCounterMode's module tracker trips over parameters that need grads
        with torch.no_grad():
            flops = count_flops(lambda: module(*inputs)) / len(inputs[0])
        started = time.perf_counter()
        choice = calibrate(module, probe, candidates=CANDIDATES, batch_sizes=(8, 16, 32) if len(inputs) == 1 else ())
        print(
            f"\n{title}: {flops / 1e9:.2f} GFLOP per item, probe batch {len(inputs[0])} "
            f"(measured in {time.perf_counter() - started:.0f} s)"
        )
        print(f"  {'runtime':<18} {'items/s':>9} {'cosine':>9} {'GFLOP/s':>8} {'share of peak':>16}")
        for m in choice.measurements:
            if m.items_per_s is None or m.min_cosine is None:  # not run, or failed on the second shape
                print(f"  {m.name:<18} {'':>9} {'':>9} {'':>8}  {m.skipped}")
                continue
            kind, top = precision_peak(peak, m.precision)
            rate = m.items_per_s * flops / 1e9
            mark = "  <- auto" if m.name == choice.name else (f"  ({m.skipped})" if m.skipped else "")
            print(
                f"  {m.name:<18} {m.items_per_s:>9.1f} {m.min_cosine:>9.5f} {rate:>8.0f} {rate / top:>9.2f} of {kind}"
                + mark
            )
        if choice.batch:
            print(f"  auto's batch: {choice.reason.rsplit('; batches of ', 1)[-1]}")
        if key == "vit-b16":
            chosen = next(m for m in choice.measurements if m.name == choice.name)
            kind, top = precision_peak(peak, chosen.precision)
            headline = (chosen.items_per_s * flops / 1e9 / top, chosen.name, kind)
    if headline:
        share, name, kind = headline
        print(f"\nViT-B/16 image forward on {name} (auto's choice): {share:.2f} of the measured {kind} peak")


if __name__ == "__main__":
    main()
