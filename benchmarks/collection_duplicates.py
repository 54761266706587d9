"""Duplicate groups, measured: planted copies in an emoji collection and in a collection of
synthetic photo-like JPEGs, and the pair search's speed at 100k rows.

    .venv/bin/python benchmarks/collection_duplicates.py [--model artifacts/quickstart/model]
        [--originals 300] [--rows 100000] [--parts emoji photos speed]

Planting. Some originals of each collection get copies, each a planted pair with its original:

    exact    the same pixels in other bytes (a PNG re-saved with other compression; a JPEG
             saved as a lossless PNG)
    near     JPEG quality 50, half size, a 90% crop (each side, at a random offset), brightness +20%
    similar  another image of the same concept (emoji: the OpenMoji drawing of a Noto emoji;
             photos: the same synthetic scene recipe drawn with another random layout)

The emoji are every Noto concept once (1,911; benchmarks/weighted_search.py writes them); the
photos are synthesised here (no photo dataset can be downloaded on this machine): 640x480 JPEGs
of procedurally generated scenes (a sky gradient, hills, a sun, houses and trees, textured noise,
a slight blur), a few hundred recipes (palette, time of day, which objects) each drawn once as an
original and once more as its "similar" image.

Per level: recall (the planted pairs whose two images end up in one group at that level or a
stricter one) and wrong pairs (the share of pairs reported at that level whose two images are
not duplicates at that level: not copies of one original, or for "similar" not of one concept).
The thresholds are swept over the candidate pairs (their pixels compared once), the module's
defaults are printed with their numbers, and the best near thresholds with at most 1% wrong pairs
on both collections are named.

Speed: `collection_neighbours` and the pairing on 100k synthetic clustered unit vectors (384-d)
through an HNSW index (the structure a 100k-row collection is searched with), in rows/s; pixel
comparisons cost extra only for candidate pairs, timed on the emoji run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402  (benchmarks/machine.py: the machine lines)

from latentspace.collections import BuildSettings, Collection, build_collection  # noqa: E402
from latentspace.collections.duplicates import (  # noqa: E402
    LEVELS,
    Components,
    DuplicateSettings,
    Pair,
    candidate_pairs,
    collection_image_reader,
    collection_neighbours,
    compare_pixels,
    group_pairs,
    index_neighbours,
    pair_level,
    read_pixels,
)

WORK = Path("artifacts/bench/collection_duplicates")
EMOJI = Path("artifacts/emoji")
NEAR_KINDS = ("jpeg50", "half", "crop90", "bright120")
KINDS = ("exact", *NEAR_KINDS, "other")
KIND_LEVEL = {"original": "exact", "exact": "exact", **{k: "near" for k in NEAR_KINDS}, "other": "similar"}
STRICTNESS = {level: i for i, level in enumerate(LEVELS)}


# --- planting -------------------------------------------------------------------------------------


def white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def plant(original: Path, out: Path, stem: str, rng: random.Random, fmt: str) -> dict[str, Path]:
    """The copies of one original, by kind (the "other" image is added by the caller)."""
    image = Image.open(original)
    image.load()
    rgb = white(image)
    copies: dict[str, Path] = {}
    # exact: other bytes, same decoded pixels
    path = out / f"{stem}.exact.png"
    (image if fmt == "PNG" else rgb).save(path, format="PNG", compress_level=1)
    copies["exact"] = path
    path = out / f"{stem}.jpeg50.jpg"
    rgb.save(path, format="JPEG", quality=50)
    copies["jpeg50"] = path
    path = out / f"{stem}.half.png"
    rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2)), Image.LANCZOS).save(path)
    copies["half"] = path
    w, h = rgb.size
    cw, ch = round(w * 0.9), round(h * 0.9)
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    path = out / f"{stem}.crop90.png"
    rgb.crop((x0, y0, x0 + cw, y0 + ch)).save(path)
    copies["crop90"] = path
    path = out / f"{stem}.bright120.png"
    ImageEnhance.Brightness(rgb).enhance(1.2).save(path)
    copies["bright120"] = path
    return copies


def noto_and_openmoji(limit_other: int, seed: int) -> tuple[list[tuple[Path, str]], dict[str, bytes]]:
    """Every Noto concept's image (path, concept) and OpenMoji drawings by concept."""
    from weighted_search import WORK as NOTO_WORK
    from weighted_search import noto_images

    table = noto_images(NOTO_WORK)
    import csv

    with open(table) as f:
        noto = [(NOTO_WORK / row["path"], row["caption"]) for row in csv.DictReader(f)]
    openmoji: dict[str, bytes] = {}
    task = EMOJI / "eval" / "emoji_openmoji_all"
    names = (task / "classnames.txt").read_text().splitlines()
    for shard in sorted((task / "test").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if name.endswith(".png"):
                    cls = int(tar.extractfile(members[name.removesuffix(".png") + ".cls"]).read())  # type: ignore[union-attr]
                    openmoji.setdefault(names[cls], tar.extractfile(members[name]).read())  # type: ignore[union-attr]
    return noto, openmoji


def emoji_library(out: Path, originals: int, seed: int) -> dict[str, tuple[str, str]]:
    """The emoji library at `out`: every Noto emoji, plus copies of `originals` of them; returns
    file name -> (origin, kind)."""
    noto, openmoji = noto_and_openmoji(originals, seed)
    rng = random.Random(seed)
    truth: dict[str, tuple[str, str]] = {}
    out.mkdir(parents=True)
    for path, _concept in noto:
        shutil.copyfile(path, out / path.name)
        truth[path.name] = (path.stem, "original")
    with_other = [(p, c) for p, c in noto if c in openmoji]
    for path, concept in rng.sample(with_other, min(originals, len(with_other))):
        for kind, copy in plant(path, out, path.stem, rng, "PNG").items():
            truth[copy.name] = (path.stem, kind)
        other = out / f"{path.stem}.other.png"
        other.write_bytes(openmoji[concept])
        truth[other.name] = (path.stem, "other")
    return truth


# --- synthetic photos -----------------------------------------------------------------------------


def scene(recipe: int, layout: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A photo-like scene: the recipe fixes the palette, time of day and kinds of objects, the
    layout where they are (so two layouts of one recipe are one 'concept', two pictures)."""
    r = np.random.default_rng(recipe)
    g = np.random.default_rng([recipe, layout])
    w, h = size
    sky_top, sky_low = r.integers(0, 256, 3), r.integers(0, 256, 3)
    ground = r.integers(0, 200, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    pixels = (sky_top * (1 - t) + sky_low * t) * np.ones((1, w, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    horizon = int(h * g.uniform(0.45, 0.7))
    for layer in range(int(r.integers(1, 4))):  # hills, each a noisy ridge
        xs = np.linspace(0, w, 12)
        ys = horizon - g.uniform(0, h * 0.25, len(xs)) + layer * 25
        shade = np.clip(ground + layer * 25 + g.integers(-20, 20, 3), 0, 255)
        draw.polygon([(0, h), *zip(xs.tolist(), ys.tolist()), (w, h)], fill=tuple(int(c) for c in shade))
    if r.random() < 0.7:  # a sun or moon
        cx, cy, radius = g.uniform(0.1, 0.9) * w, g.uniform(0.05, 0.35) * h, r.uniform(20, 60)
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=tuple(int(c) for c in r.integers(150, 256, 3))
        )
    kinds = r.choice(["house", "tree", "rock", "pole"], size=2)
    for _ in range(int(r.integers(2, 8))):
        kind = kinds[int(g.integers(0, 2))]
        x, y = g.uniform(0, w), g.uniform(horizon, h)
        s = g.uniform(20, 70) * (0.5 + (y - horizon) / max(h - horizon, 1))
        colour = tuple(int(c) for c in np.clip(r.integers(0, 256, 3) + g.integers(-30, 30, 3), 0, 255))
        if kind == "house":
            draw.rectangle((x, y - s, x + s * 1.3, y), fill=colour)
            draw.polygon([(x - 5, y - s), (x + s * 0.65, y - s * 1.6), (x + s * 1.3 + 5, y - s)], fill=(120, 40, 30))
        elif kind == "tree":
            draw.rectangle((x - s * 0.08, y - s, x + s * 0.08, y), fill=(80, 50, 20))
            draw.ellipse((x - s * 0.5, y - s * 1.9, x + s * 0.5, y - s * 0.8), fill=colour)
        elif kind == "rock":
            draw.ellipse((x, y - s * 0.5, x + s, y), fill=colour)
        else:
            draw.line((x, y, x, y - s * 2), fill=colour, width=4)
    # sensor-like noise and a slight blur, so the JPEG has texture to compress
    noisy = np.asarray(image, dtype=np.float32) + g.normal(0, r.uniform(3, 12), (h, w, 3))
    out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(float(r.uniform(0.3, 1.2))))


def photo_library(out: Path, recipes: int, originals: int, seed: int) -> dict[str, tuple[str, str]]:
    rng = random.Random(seed)
    truth: dict[str, tuple[str, str]] = {}
    out.mkdir(parents=True)
    for recipe in range(recipes):
        path = out / f"scene{recipe:04d}.jpg"
        scene(recipe, 0).save(path, format="JPEG", quality=90)
        truth[path.name] = (path.stem, "original")
    for recipe in rng.sample(range(recipes), min(originals, recipes)):
        path = out / f"scene{recipe:04d}.jpg"
        for kind, copy in plant(path, out, path.stem, rng, "JPEG").items():
            truth[copy.name] = (path.stem, kind)
        other = out / f"{path.stem}.other.jpg"
        scene(recipe, 1).save(other, format="JPEG", quality=90)
        truth[other.name] = (path.stem, "other")
    return truth


# --- measuring ------------------------------------------------------------------------------------


def true_level(a: tuple[str, str], b: tuple[str, str]) -> str | None:
    """The strictest level at which two items really are duplicates (None: not at all). Copies
    of one original are near each other (exact when both have the original's pixels); the
    "other" image is only similar to them."""
    if a[0] != b[0]:
        return None
    if "other" in (a[1], b[1]):
        return "similar"
    if {a[1], b[1]} <= {"original", "exact"}:
        return "exact"
    return "near"


class Measured:
    """A built collection's candidate pairs with their pixel facts, computed once, so any
    thresholds can be scored without reading images again."""

    def __init__(self, collection: Collection, truth: dict[str, tuple[str, str]], k: int, floor: float):
        self.collection = collection
        names = [Path(p).name for p in collection.meta.column("path").to_pylist()]
        self.truth = [truth[n] for n in names]
        # Originals with the same decoded pixels (Noto draws some emoji of different code points
        # identically) are one original: their copies are copies of each other.
        read = collection_image_reader(collection)
        same: dict[str, str] = {}
        for row, (origin, kind) in enumerate(self.truth):
            if kind == "original":
                digest = read_pixels(read(row)).digest  # type: ignore[arg-type]
                self.truth[row] = (same.setdefault(digest, origin), kind)
        alias = {truth[n][0]: self.truth[i][0] for i, n in enumerate(names) if truth[n][1] == "original"}
        self.truth = [(alias.get(origin, origin), kind) for origin, kind in self.truth]
        started = time.perf_counter()
        scores, rows, self.kind = collection_neighbours(collection, k)
        self.candidates = candidate_pairs(scores, rows, floor)
        self.neighbour_seconds = time.perf_counter() - started
        sha = collection.meta.column("sha256").to_pylist()
        cache: dict = {}
        started = time.perf_counter()
        self.facts = {}
        for a, b in self.candidates:
            for row in (a, b):
                if row not in cache:
                    image = read(row)
                    cache[row] = read_pixels(image) if image is not None else None
            self.facts[(a, b)] = (sha[a] == sha[b], compare_pixels(cache[a], cache[b]))
        self.pixel_seconds = time.perf_counter() - started
        # every planted pair, by the level it was planted at
        by_origin: dict[str, list[int]] = {}
        for row, (origin, _) in enumerate(self.truth):
            by_origin.setdefault(origin, []).append(row)
        self.planted = {level: [] for level in LEVELS}
        for rows_ in by_origin.values():
            original = next(r for r in rows_ if self.truth[r][1] == "original")
            for r in rows_:
                if r != original and self.truth[r][1] != "original":  # identical originals are not planted
                    self.planted[KIND_LEVEL[self.truth[r][1]]].append((original, r))

    def score(self, settings: DuplicateSettings) -> dict[str, tuple[float, float, int]]:
        """Per level: (recall of planted pairs, share of reported pairs that are wrong, pairs reported)."""
        pairs = []
        for (a, b), cosine in self.candidates.items():
            same_bytes, pixels = self.facts[(a, b)]
            level = pair_level(
                cosine, settings, same_bytes=same_bytes, pixels=pixels if cosine >= settings.near_candidate else None
            )
            if level is not None:
                pairs.append(Pair(a, b, cosine, level))
        out = {}
        for level in LEVELS:
            found = 0
            for a, b in self.planted[level]:
                ga, gb = _group_at(pairs, level, a), _group_at(pairs, level, b)
                found += ga is not None and ga == gb
            reported = [p for p in pairs if p.level == level]
            wrong = 0
            for p in reported:
                truth = true_level(self.truth[p.a], self.truth[p.b])
                wrong += truth is None or STRICTNESS[truth] > STRICTNESS[level]
            recall = found / max(len(self.planted[level]), 1)
            out[level] = (recall, wrong / max(len(reported), 1), len(reported))
        return out


_COMPONENTS: dict = {}


def _group_at(pairs: list[Pair], level: str, row: int) -> int | None:
    """The component of `row` over the pairs at `level` or stricter (memoised per pair list)."""
    key = (id(pairs), level)
    if key not in _COMPONENTS:
        _COMPONENTS.clear() if len(_COMPONENTS) > 64 else None
        components = Components()
        for p in pairs:
            if STRICTNESS[p.level] <= STRICTNESS[level]:
                components.join(p.a, p.b)
        _COMPONENTS[key] = ({r: components.find(r) for r in components.rows()}, pairs)
    return _COMPONENTS[key][0].get(row)


def measure(name: str, directory: Path, truth: dict, model: str) -> Measured:
    started = time.perf_counter()
    build_collection(directory / "collection", model, directory / "images", settings=BuildSettings())
    print(f"{name}: built {len(truth)} images in {time.perf_counter() - started:.0f} s", flush=True)
    collection = Collection.open(directory / "collection")
    floor = 0.4  # the lowest near_candidate swept
    measured = Measured(collection, truth, DuplicateSettings().k, floor)
    print(
        f"{name}: {len(collection)} items, {len(measured.candidates)} candidate pairs at cosine >= {floor} "
        f"({measured.kind} neighbours {measured.neighbour_seconds:.1f} s, pixels compared in "
        f"{measured.pixel_seconds:.1f} s: {len(measured.candidates) / max(measured.pixel_seconds, 1e-9):.0f} pairs/s)",
        flush=True,
    )
    return measured


def report(name: str, measured: Measured, settings: DuplicateSettings) -> None:
    scores = measured.score(settings)
    planted = {level: len(measured.planted[level]) for level in LEVELS}
    for level in LEVELS:
        recall, wrong, reported = scores[level]
        print(
            f"  {name:7s} {level:8s} recall {recall:.3f} of {planted[level]} planted pairs; "
            f"{reported} pairs reported, wrong {wrong:.2%}"
        )


def sweep(measured: dict[str, Measured]) -> None:
    """The near thresholds: recall and wrong pairs on every collection for a grid, and the best
    (highest worst-case recall with at most 1% wrong pairs everywhere)."""
    print("\nnear level: near_candidate x near_pixels -> recall / wrong per collection")
    best = None
    for candidate in (0.4, 0.5, 0.6, 0.7):
        for pixels in (0.5, 0.6, 0.7, 0.725, 0.75, 0.775, 0.8, 0.825, 0.85, 0.9):
            s = DuplicateSettings(near_candidate=candidate, near_pixels=pixels, similar=max(candidate, 0.9))
            results = {n: m.score(s)["near"] for n, m in measured.items()}
            line = "  ".join(f"{n} {r:.3f} / {w:.2%}" for n, (r, w, _) in results.items())
            print(f"  {candidate:.2f} x {pixels:.3f}: {line}")
            worst_recall = min(r for r, _, _ in results.values())
            worst_wrong = max(w for _, w, _ in results.values())
            if worst_wrong <= 0.01 and (best is None or worst_recall > best[0]):
                best = (worst_recall, candidate, pixels)
    if best:
        print(
            f"best near thresholds (<= 1% wrong on all): near_candidate {best[1]}, near_pixels {best[2]} "
            f"(worst recall {best[0]:.3f})"
        )
    print("\nsimilar level: similar -> recall / wrong per collection")
    for similar in (0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95):
        s = DuplicateSettings(similar=similar, near_candidate=min(similar, DuplicateSettings().near_candidate))
        results = {n: m.score(s)["similar"] for n, m in measured.items()}
        print(f"  {similar:.2f}: " + "  ".join(f"{n} {r:.3f} / {w:.2%} of {c}" for n, (r, w, c) in results.items()))


# --- speed ----------------------------------------------------------------------------------------


def speed(rows: int, dim: int = 384, k: int = 10, seed: int = 0) -> None:
    from latentspace.collections.index import HnswIndex

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(rows // 100, 1), dim)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + 0.5 * rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    index = HnswIndex.build(vectors, np.arange(rows))
    built = time.perf_counter() - started
    started = time.perf_counter()
    scores, found = index_neighbours(index, np.arange(rows), vectors, k)
    pairs = candidate_pairs(scores, found, DuplicateSettings().near_candidate)
    group_pairs([Pair(a, b, s, "similar") for (a, b), s in pairs.items()])
    took = time.perf_counter() - started
    print(
        f"\nspeed: {rows} clustered {dim}-d rows, k={k}, HNSW (built in {built:.0f} s, not counted): "
        f"neighbours + pairs + groups in {took:.1f} s = {rows / took:,.0f} rows/s ({len(pairs)} pairs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts/quickstart/model")
    parser.add_argument("--originals", type=int, default=300, help="originals given planted copies, per collection")
    parser.add_argument("--recipes", type=int, default=1000, help="synthetic photo scenes (originals and distractors)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the speed measurement")
    parser.add_argument(
        "--parts", nargs="+", default=["emoji", "photos", "speed"], choices=["emoji", "photos", "speed"]
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(describe(), flush=True)

    measured: dict[str, Measured] = {}
    for name in ("emoji", "photos"):
        if name not in args.parts:
            continue
        directory = WORK / name
        shutil.rmtree(directory, ignore_errors=True)
        if name == "emoji":
            truth = emoji_library(directory / "images", args.originals, args.seed)
        else:
            truth = photo_library(directory / "images", args.recipes, args.originals, args.seed)
        measured[name] = measure(name, directory, truth, args.model)
    if measured:
        defaults = DuplicateSettings()
        print(f"\ndefaults {defaults.model_dump()}:")
        for name, m in measured.items():
            report(name, m, defaults)
        sweep(measured)
    if "speed" in args.parts:
        speed(args.rows)


if __name__ == "__main__":
    main()
