"""Weighted search on real emoji: does subtracting a text push its look out of the results, and does
adding a text to "more like this" move the results toward that text?

    .venv/bin/python benchmarks/weighted_search.py [--model artifacts/quickstart/model]

The collection is every Noto emoji concept once (no skin-tone variants): the held-out concepts
from the Noto evaluation task (artifacts/emoji/eval/emoji_noto_heldout) and the training
concepts from the training shards (artifacts/emoji/train). The model has seen the training
images, so this measures what the weights do to a ranking, not how well the model generalises.
The images and a path,caption table go to artifacts/bench/weighted_search/ (made once), and the
collection is built there with `build_collection` (incremental: a second run embeds nothing).

Two measurements, printed after the machine lines:

1. "heart" against "heart" minus "red": how many of the top 10 are hearts (the emoji's name has
   "heart") and how many are red hearts. Red is read from the pixels, not the name, so the
   count does not depend on what the names say: a heart is red when at least 40% of its opaque
   pixels have a red hue (within 20 degrees of pure red, saturation and value above 0.35).
2. "like ITEM" against "like ITEM" plus a text, for a few items and texts: the mean cosine of
   the top 10 to the text alone, and how many of the top 10 have the text's word in their name.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402  (benchmarks/machine.py: the machine lines)

from latentspace.collections import Collection, Term, build_collection  # noqa: E402

ROOT = Path("artifacts/emoji")
HELDOUT = ROOT / "eval" / "emoji_noto_heldout"
WORK = Path("artifacts/bench/weighted_search")
K = 10
# (item to search like, by its name; a text to add) pairs: each text is far from its item
LIKE_PLUS = [
    ("red apple", "blue"),
    ("grinning face", "cat"),
    ("automobile", "night"),
    ("rose", "yellow"),
    ("dog face", "heart"),
]


def noto_training_samples() -> Iterator[tuple[str, dict, bytes]]:
    """(sample key, its json metadata, its PNG bytes) of every Noto sample of the training shards
    that is not a skin-tone variant, in shard and key order."""
    for shard in sorted((ROOT / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if not (name.startswith("noto_") and name.endswith(".json")):
                    continue
                meta = json.loads(tar.extractfile(members[name]).read())  # type: ignore[union-attr]
                if meta.get("skin_tone"):
                    continue
                key = name.removesuffix(".json")
                yield key, meta, tar.extractfile(members[key + ".png"]).read()  # type: ignore[union-attr]


def noto_images(out: Path) -> Path:
    """Write each Noto concept's image once, and a path,caption table; return the table."""
    table = out / "noto.csv"
    if table.exists():
        return table
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    names = (HELDOUT / "classnames.txt").read_text().splitlines()
    with tarfile.open(next((HELDOUT / "test").glob("*.tar"))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".png"):
                key = name.removesuffix(".png")
                label = names[int(tar.extractfile(members[key + ".cls"]).read())]  # type: ignore[union-attr]
                rows.append((_save(images, f"heldout_{key}.png", tar.extractfile(members[name]).read()), label))  # type: ignore[union-attr]
    for key, meta, data in noto_training_samples():
        rows.append((_save(images, f"train_{key}.png", data), meta["name"]))
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption"])
        writer.writerows(rows)
    return table


def _save(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return f"images/{name}"


def red_fraction(path: str) -> float:
    """The share of an image's opaque pixels that are a saturated, bright red: hue within 10
    degrees of red, saturation and value above 0.6 (so brown, orange and pink are not red)."""
    rgba = Image.open(path).convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A")) > 128
    hsv = np.asarray(rgba.convert("RGB").convert("HSV"), dtype=np.float32) / 255
    hue, saturation, value = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    red = ((hue <= 10) | (hue >= 350)) & (saturation > 0.6) & (value > 0.6) & alpha
    return float(red.sum() / max(alpha.sum(), 1))


def is_red(hit) -> bool:
    return red_fraction(hit.path) >= 0.4


def is_heart(hit) -> bool:
    return "heart" in (hit.caption or "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts/quickstart/model")
    args = parser.parse_args()
    print(describe(), flush=True)

    from latentspace.models.load import load

    table = noto_images(WORK)
    directory = WORK / "collection"
    report = build_collection(directory, args.model, str(table), name="noto")
    collection = Collection.open(directory)
    model = load(args.model)
    every = [collection.item(i) for i in collection.meta.column("id").to_pylist()]
    ids = {hit.caption: hit.id for hit in every}
    red_hearts = sorted(h.caption for h in every if is_heart(h) and is_red(h))
    print(f"collection: {len(collection)} Noto emoji ({report.images_embedded} embedded this run), model {args.model}")
    print(f"red items: {sum(is_red(h) for h in every)}; red hearts: {len(red_hearts)} {red_hearts}")

    def search(terms):
        return collection.search_terms(model, terms, k=K)

    print(f"\n1. top {K}: hearts / red hearts (red: >= 40% of the opaque pixels a saturated red)")
    red_circle = ids["large red circle"]  # an image of red and nothing else: red without a heart
    for label, terms in (
        ('"red" (for scale)', [Term("text", "red")]),
        ('"heart"', [Term("text", "heart")]),
        ('"heart" - "red"', [Term("text", "heart"), Term("text", "red", -1.0)]),
        ('"heart" - 2 "red"', [Term("text", "heart"), Term("text", "red", -2.0)]),
        ('"heart" - 0.5 like red circle', [Term("text", "heart"), Term("like", red_circle, -0.5)]),
        ('"heart" - like red circle', [Term("text", "heart"), Term("like", red_circle, -1.0)]),
    ):
        hits = search(terms)
        hearts = [h for h in hits if is_heart(h)]
        red = sum(is_red(h) for h in hits)
        print(
            f"  {label:30s} hearts {len(hearts):2d}  red hearts {sum(is_red(h) for h in hearts):2d}  red {red:2d}  "
            f"{[h.caption for h in hits]}"
        )

    print(f"\n2. like ITEM + w TEXT: the top {K}'s mean cosine to TEXT / how many have TEXT's word in their name")
    print(f"  {'item':16s} {'text':8s} " + "  ".join(f"{'w=' + str(w):>12s}" for w in (0, 1, 2, 4)))
    for item_name, text in LIKE_PLUS:
        toward = model.embed_texts([text], "search_query")[0].numpy()
        cells = []
        for weight in (0, 1, 2, 4):
            terms = [Term("like", ids[item_name])] + ([Term("text", text, float(weight))] if weight else [])
            hits = search(terms)
            cosine = float(np.mean([collection.vector(h.id) @ toward for h in hits]))
            cells.append(f"{cosine:+.3f} / {sum(text in (h.caption or '') for h in hits):2d}")
        print(f"  {item_name:16s} {text:8s} " + "  ".join(f"{cell:>12s}" for cell in cells))


if __name__ == "__main__":
    main()
