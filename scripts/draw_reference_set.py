"""Draw the reference images the server embeds at start-up (src/latentspace/reference/).

    python scripts/draw_reference_set.py     # rewrites the PNGs; commit them with this script

The server embeds these images (and reference/texts.json) with each served model's chosen
runtime and with PyTorch fp32, and publishes the lowest cosine between the two (runtime/
agreement.py). So they cover what moves a runtime's numbers: flat colour, smooth gradients, hard
edges, fine noise, transparency (composited onto white on every path), and sizes and aspect
ratios that the model's resize has to change. Small on purpose: the check must not slow start-up.
Drawn from a fixed seed, so rerunning gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "src" / "latentspace" / "reference"


def draw() -> dict[str, Image.Image]:
    rng = np.random.default_rng(20261206)
    images: dict[str, Image.Image] = {}

    flat = Image.new("RGB", (64, 64), (200, 40, 60))
    images["flat-colour"] = flat

    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    gradient = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:64, None], (1, 96)), np.full((64, 96), 90.0)], -1)
    images["gradient-wide"] = Image.fromarray(gradient.astype(np.uint8))

    shapes = Image.new("RGB", (80, 80), "white")
    d = ImageDraw.Draw(shapes)
    d.ellipse((8, 8, 44, 44), fill=(30, 90, 220))
    d.rectangle((40, 36, 74, 70), fill=(250, 200, 20), outline=(0, 0, 0), width=2)
    d.polygon([(10, 72), (30, 50), (44, 74)], fill=(20, 160, 70))
    images["shapes"] = shapes

    images["noise"] = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))

    # an emoji-like icon on a transparent canvas: the transparency policy is part of the check
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    d = ImageDraw.Draw(icon)
    d.ellipse((6, 6, 58, 58), fill=(255, 204, 77, 255), outline=(120, 80, 0, 255), width=3)
    d.ellipse((20, 22, 27, 30), fill=(60, 40, 20, 255))
    d.ellipse((37, 22, 44, 30), fill=(60, 40, 20, 255))
    d.arc((18, 26, 46, 48), 20, 160, fill=(60, 40, 20, 255), width=3)
    images["icon-transparent"] = icon

    stripes = Image.new("RGB", (40, 72), "white")
    d = ImageDraw.Draw(stripes)
    for y in range(0, 72, 6):
        d.line((0, y, 40, y + 10), fill=(int(rng.integers(0, 200)), 0, int(rng.integers(60, 256))), width=2)
    images["stripes-tall"] = stripes
    return images


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, image in draw().items():
        image.save(OUT / f"{name}.png", optimize=True)
        print(OUT / f"{name}.png", image.size, image.mode)


if __name__ == "__main__":
    main()
