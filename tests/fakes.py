"""Small real data for tests: drawn shapes in named colours, written as webdataset shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import webdataset as wds
from PIL import Image, ImageDraw

from latentspace.config import RunConfig, load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
CONCEPTS = [f"{c} {s}" for c in COLOURS for s in SHAPES]


def draw(concept: str, size: int = 64, style: int = 0) -> Image.Image:
    """`style` changes the drawing (filled vs outlined, margins), like two emoji art styles."""
    colour, shape = concept.split()
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    m = size // (5 if style == 0 else 4)
    box = (m, m, size - m, size - m)
    kw = {"fill": COLOURS[colour]} if style == 0 else {"outline": COLOURS[colour], "width": max(2, size // 10)}
    if shape == "circle":
        d.ellipse(box, **kw)
    elif shape == "square":
        d.rectangle(box, **kw)
    else:
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], **kw)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(directory: Path, *, n_shards: int = 2, per_shard: int = 24, style: int = 0,
                 corrupt: int = 0, empty_caption: int = 0) -> list[Path]:
    """Shards of drawn concepts; `corrupt` samples hold random bytes, `empty_caption` ones no text."""
    directory.mkdir(parents=True, exist_ok=True)
    paths, i = [], 0
    for s in range(n_shards):
        path = directory / f"shard-{s:06d}.tar"
        with wds.TarWriter(str(path)) as w:
            for _ in range(per_shard):
                concept = CONCEPTS[i % len(CONCEPTS)]
                sample = {"__key__": f"{i:06d}", "png": png_bytes(draw(concept, style=style)), "txt": concept,
                          "json": json.dumps({"captions": [concept, f"a {concept}"]}).encode()}
                if i < corrupt:
                    sample["png"] = b"\x89PNG not really" + bytes(range(50))
                elif i < corrupt + empty_caption:
                    sample["txt"], sample["json"] = "  ", json.dumps({"captions": []}).encode()
                w.write(sample)
                i += 1
        paths.append(path)
    return paths


def brace(paths: list[Path]) -> str:
    """`dir/shard-{000000..000001}.tar` for a run of consecutive shards."""
    return str(paths[0].parent / f"shard-{{000000..{len(paths) - 1:06d}}}.tar")


def make_emoji_package(path: Path, style: str) -> tuple[Path, str]:
    """A miniature emoji-datasource-<style> tarball: emoji.json + 64 px art of the drawn concepts.
    Returns (path, npm-style integrity string)."""
    import base64
    import hashlib
    import tarfile

    art = {"twitter": 0, "google": 1}[style]
    entries = []
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, concept in enumerate(CONCEPTS):
            image = f"{i:04x}.png"
            entries.append({"name": concept.upper(), "unified": f"{i:04X}", "image": image,
                            "short_names": [concept.replace(" ", "_")], "category": "Symbols",
                            "subcategory": concept.split()[1], "sort_order": i,
                            "has_img_twitter": True, "has_img_google": True})
            add(f"package/img/{style}/64/{image}", png_bytes(draw(concept, style=art)))
        add("package/emoji.json", json.dumps(entries).encode())
    digest = base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    return path, f"sha512-{digest}"


TINY_VISION = {"arch": "vit_tiny_patch16_224", "image_size": 16, "patch_size": 8, "pool": "mean",
               "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2}}


def tiny_config(out: Path, shards: str, *overrides: str, steps: int = 6, workers: int = 0) -> RunConfig:
    base = {"vision": dict(TINY_VISION), "data": {"train_shards": shards, "workers": workers, "shuffle_buffer": 16}}
    return load_config(None, [
        f"train.output_dir={out / 'run'}", f"train.text_cache_dir={out / 'cache'}", f"train.steps={steps}",
        "train.batch_size=8", "train.checkpoint_every=2", "train.log_every=1", "optim.warmup_steps=1", *overrides,
    ], base=base)


def minilm_with_prompts(tmp_path: Path, prompts: dict[str, str]) -> Path:
    """The packaged MiniLM, but declaring task prefixes (weights linked, not copied)."""
    import os

    from latentspace.models.text_tower import resolve_text_model_path

    src = resolve_text_model_path("builtin:all-MiniLM-L6-v2")
    dst = tmp_path / "minilm-prefixed"
    for p in src.rglob("*"):
        if p.is_file():
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p, target)
    (dst / "config_sentence_transformers.json").unlink()
    (dst / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return dst
