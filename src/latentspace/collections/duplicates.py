"""Duplicate groups in a collection, at three levels:

    exact    the same decoded pixels (a re-saved PNG, a JPEG copied as a lossless PNG, the same file twice)
    near     the same picture re-encoded, resized, slightly cropped or colour-shifted
    similar  the same scene or subject (another photo of it, another drawing of the concept)

How the pairs are found. Each item's k nearest neighbours come from the collection's own search
structure (exact inner products below the HNSW threshold, the HNSW index above it), so the cost
grows as n * k, not n^2, on an indexed collection. A neighbour at cosine `similar` or more makes a
pair. Embeddings alone cannot tell a near copy from another picture of the same thing: on the
Noto emoji, distinct emoji (a man firefighter and a firefighter, two smileys) score 0.95-0.98
with each other, as high as a 90% crop of an emoji scores with itself, and a brightened copy of a pale
emoji can score as low as 0.55. So a pair at cosine `near_candidate` or more has its two images
read again and compared by pixels (`pixel_agreement`: 32 px thumbnails aligned over a few crops,
then the aligned images at 64 px matched by one gain, each pixel allowed its prediction's range one
pixel around, and the worst 4 x 4 cell's difference left), so a re-encoding, a resize, a small
crop or a brightness change keeps it high while a drawing that differs in one place (an emblem, a
pair of eyes) or in hue (another skin tone, orange for yellow) does not.
Pixels that agree at `near_pixels` or more make a near pair; pixels that are identical (the hash
of the decoded RGB pixels and size) an exact one. Items with the same sha256 (the same file
bytes) are exact without being read.

A pair whose images cannot be read again (URLs, piped shards, files changed since the build) is
not verified: it stays at the similar level at most and is counted in `unverified`.

Groups are the connected components of a level's pairs together with the stricter levels' pairs
(a near group may hold an exact pair); a looser level does not repeat a group a stricter level
already has. The defaults of the thresholds were set by measurement (benchmarks/collection_duplicates.py,
docs/collections.md), not by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from latentspace.collections.index import top_k
from latentspace.options import Flag

Level = Literal["exact", "near", "similar"]
LEVELS: tuple[Level, ...] = ("exact", "near", "similar")
DUPLICATES_PANELS = {"levels": "Levels", "search": "Pair search"}
DUPLICATES_ENV_PREFIX = "LATENTSPACE_DUPLICATES_"
SIGNATURE_SIDE = 32  # thumbnails aligned, in pixels a side: enough for the layout, blind to JPEG noise
FINE_SIDE = 64  # the aligned images are compared at this side: a small emblem or a pair of eyes shows
CELL = 4  # the local differences are measured per CELL x CELL pixels at FINE_SIDE
WORKING_SIDE = 128  # images are reduced to about this before the crop alignments are tried
# Crop alignments tried: the larger view cropped to each scale, at each relative offset.
CROP_SCALES = (1.0, 0.95, 0.9, 0.85)
CROP_OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)
EXACT_BLOCK = 2048  # query rows per matrix product in the exact neighbour search


class DuplicateSettings(BaseModel):
    """What `collection duplicates` reports as duplicates (its options are generated from these
    fields). Defaults measured by benchmarks/collection_duplicates.py (docs/collections.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    similar: Annotated[float, Flag("levels")] = Field(
        0.9, ge=-1.0, le=1.0, description="cosine at or above which two items are similar (same scene or subject)"
    )
    near_candidate: Annotated[float, Flag("levels")] = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="cosine at or above which a pair's images are read again and compared pixel by pixel",
    )
    near_pixels: Annotated[float, Flag("levels")] = Field(
        0.8,
        ge=-1.0,
        le=1.0,
        description="pixel agreement (1 - the worst local difference once aligned) from which a pair is a near copy",
    )
    k: Annotated[int, Flag("search", short="-k")] = Field(
        10, ge=1, le=1000, description="neighbours looked at per item (the cost grows as items x k)"
    )

    @model_validator(mode="after")
    def _candidates_cover_similar(self) -> DuplicateSettings:
        # A near copy is always at least similar: checking pixels only above `similar` would
        # leave out the near copies that the model embeds further apart (heavy crops).
        if self.near_candidate > self.similar:
            raise ValueError(
                f"near_candidate ({self.near_candidate}) must not be above similar ({self.similar}): a near copy "
                "is also similar, so its pixels must be checked wherever a similar pair is found"
            )
        return self


@dataclass(frozen=True)
class Pair:
    """Two items (meta rows, a < b) found duplicates at `level`; `pixels` is their pixel
    agreement when their images were compared (None otherwise)."""

    a: int
    b: int
    cosine: float
    level: Level
    pixels: float | None = None


@dataclass
class Group:
    level: Level
    rows: list[int]
    members: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "size": len(self.rows), "members": self.members}


@dataclass
class DuplicateReport:
    collection: str
    items: int
    settings: DuplicateSettings
    pairs: list[Pair]
    groups: list[Group]
    unverified: int = 0  # candidate pairs whose images could not be read again
    search: str = "exact"  # how the neighbours were found: exact or hnsw

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            level: {
                "pairs": sum(p.level == level for p in self.pairs),
                "groups": sum(g.level == level for g in self.groups),
            }
            for level in LEVELS
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "items": self.items,
            "search": self.search,
            "settings": self.settings.model_dump(),
            "counts": self.counts(),
            "unverified": self.unverified,
            "groups": [g.to_dict() for g in self.groups],
        }


# --- the neighbour search ---------------------------------------------------------------------


def exact_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (n, k): every row's k nearest other rows by inner product, exactly.
    Blocks of rows at a time, so memory stays at EXACT_BLOCK x n scores."""
    n = len(vectors)
    k = min(k, max(n - 1, 0))
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, EXACT_BLOCK):
        block = vectors[start : start + EXACT_BLOCK] @ vectors.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not itself
        for i, row in enumerate(block):
            best = top_k(row, k)
            scores[start + i, : len(best)], rows[start + i, : len(best)] = row[best], best
    return scores, rows


def index_neighbours(
    index, index_rows: np.ndarray, vectors: np.ndarray, k: int, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each (n, k): every row's k nearest other live rows from an HnswIndex
    (`index_rows`: the meta row of each index entry, -1 for rows no longer live). One more
    neighbour than k is asked for, since an item finds itself first."""
    import faiss

    live = index_rows >= 0
    params = faiss.SearchParametersHNSW()
    params.efSearch = max(index.params.ef_search, k + 1)
    bitmap = None
    if not live.all():  # dead rows (deleted or changed items) are never neighbours
        bitmap = np.packbits(live, bitorder="little")
        params.sel = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap))
    n = len(vectors)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    rows = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, batch):
        queries = np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)
        found_scores, entries = index.index.search(queries, k + 1, params=params)
        found_rows = np.where(entries >= 0, index_rows[np.maximum(entries, 0)], -1)
        for i in range(len(queries)):
            own = start + i
            keep = (found_rows[i] >= 0) & (found_rows[i] != own)
            got = found_rows[i][keep][:k]
            rows[own, : len(got)], scores[own, : len(got)] = got, found_scores[i][keep][:k]
    del bitmap  # the selector reads it during the searches only
    return scores, rows


def collection_neighbours(collection, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Every item's k nearest other items in `collection` (a search.Collection), found the way
    the collection searches: exactly, or through its HNSW index. Returns (scores, rows, kind)."""
    if hasattr(collection, "neighbours"):  # a collection in PostgreSQL: one query through its HNSW index
        scores, rows = collection.neighbours(k)
        return scores, rows, "hnsw (pgvector)"
    # The Collection keeps either its vectors (exact search) or an index holding them; the
    # search over all items at once needs the arrays themselves, not one query at a time.
    if not hasattr(collection, "_vectors") or not hasattr(collection, "_index"):
        from latentspace.collections.store import CollectionError

        raise CollectionError(
            f"duplicates are found in collections stored as Parquet parts; {collection.name!r} is stored "
            "elsewhere: export it to a directory collection first"
        )
    index = collection._index
    if index is None:
        scores, rows = exact_neighbours(collection._vectors, k)
        return scores, rows, "exact"
    index_rows = collection._index_rows
    vectors = index.vectors()[collection._entries_of(np.arange(len(collection)))]
    scores, rows = index_neighbours(index, index_rows, vectors, k)
    return scores, rows, "hnsw"


def candidate_pairs(scores: np.ndarray, rows: np.ndarray, threshold: float) -> dict[tuple[int, int], float]:
    """Unordered pairs (a < b) among the neighbour lists scoring `threshold` or more, each with
    its best score (the two directions can differ slightly under HNSW)."""
    own, slot = np.nonzero((scores >= threshold) & (rows >= 0))
    pairs: dict[tuple[int, int], float] = {}
    for i, j, s in zip(own.tolist(), rows[own, slot].tolist(), scores[own, slot].tolist()):
        key = (i, j) if i < j else (j, i)
        if s > pairs.get(key, -np.inf):
            pairs[key] = s
    return pairs


# --- pixels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pixels:
    """What a comparison needs of one decoded image, computed once per image: the hash of its
    RGB pixels and size (equal hashes: exact copies), the thumbnails of the whole image and of
    its crops (CROP_SCALES x CROP_OFFSETS) that align two images, and the image itself (reduced
    to about WORKING_SIDE) with its whole view at FINE_SIDE, which the aligned comparison reads."""

    digest: str
    views: np.ndarray  # (V, SIGNATURE_SIDE, SIGNATURE_SIDE, 3) pixel values; views[0] is the whole image
    centred: np.ndarray  # (V, SIGNATURE_SIDE**2 * 3) the same with each view's channel means taken out
    norms: np.ndarray  # (V,) the length of each row of `centred`
    image: Image.Image  # the RGB image, reduced to about WORKING_SIDE a side
    fine: np.ndarray  # (FINE_SIDE, FINE_SIDE, 3) the whole image at the finer scale
    contrast: float  # the contrast of `fine` (see _contrast)

    @property
    def whole(self) -> np.ndarray:
        return self.views[0]

    def fine_view(self, view: int) -> np.ndarray:
        """View `view` (an index into `views`) at FINE_SIDE x FINE_SIDE."""
        if view == 0:
            return self.fine
        box = crop_boxes(*self.image.size)[view]
        return np.asarray(self.image.resize((FINE_SIDE, FINE_SIDE), Image.BILINEAR, box=box), dtype=np.float32)


def crop_boxes(w: int, h: int) -> list[tuple[float, float, float, float]]:
    """The boxes of the views of a w x h image: the whole, then each crop scale at each offset."""
    boxes = []
    for crop in CROP_SCALES:
        cw, ch = w * crop, h * crop
        for fx in CROP_OFFSETS if crop < 1 else (0.0,):
            for fy in CROP_OFFSETS if crop < 1 else (0.0,):
                x0, y0 = (w - cw) * fx, (h - ch) * fy
                boxes.append((x0, y0, x0 + cw, y0 + ch))
    return boxes


def read_pixels(image: Image.Image) -> Pixels:
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    scale = WORKING_SIDE / max(rgb.width, rgb.height)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BOX)
    views = [
        np.asarray(rgb.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.BILINEAR, box=box), dtype=np.float32)
        for box in crop_boxes(*rgb.size)
    ]
    stack = np.stack(views)
    centred = (stack - stack.mean(axis=(1, 2), keepdims=True)).reshape(len(stack), -1)
    fine = np.asarray(rgb.resize((FINE_SIDE, FINE_SIDE), Image.BILINEAR), dtype=np.float32)
    return Pixels(digest, stack, centred, np.linalg.norm(centred, axis=1), rgb, fine, _contrast(fine))


def pixel_agreement(a: Pixels, b: Pixels) -> float:
    """How well two images' pixels agree, at most 1: one minus the largest local difference
    between them, once aligned and matched in brightness.

    Alignment, at SIGNATURE_SIDE: the crop of either image (scales CROP_SCALES, offsets
    CROP_OFFSETS) whose thumbnail correlates best with the other's whole thumbnail, so a copy
    cropped to 85% or more lines up. The comparison, at FINE_SIDE in that aligned frame: each of
    the two is predicted from the other by one gain for all channels, the median ratio of the
    pixels where the predicted one is not clipped (a brightened copy is the image times a gain, clipped to
    0..255; one gain keeps the hue, and no offset: with an offset, one skin tone or one orange
    maps onto another almost exactly), and each pixel's difference is
    its distance from the range its prediction takes within one pixel around it (so a sub-pixel
    shift, a resize's blur or a crop's rounding costs nothing, while a region of another colour
    or shape does), in the worst channel (a change of hue shows in one channel). The difference is
    averaged per cell of CELL x CELL pixels and the worst cell, relative to the larger of the two
    images' contrasts, decides; the better of the two directions counts. A global correlation is
    not enough: two emoji that differ only in their eyes, or two flags that differ only in a small
    emblem, correlate at 0.95-0.99 like true copies, and differ in one place only, which the worst
    cell at the finer scale sees."""
    best = None
    for source, target in ((a, b), (b, a)):  # crops of `source` against the whole of `target`
        whole = target.centred[0]
        norms = source.norms * float(target.norms[0])
        correlation = (source.centred @ whole) / np.maximum(norms, 1e-6)
        i = int(np.argmax(correlation))
        if norms[i] < 1e-3:  # a flat (one-colour) image: only its colour can be compared
            correlation[i] = -1.0
        if best is None or correlation[i] > best[0]:
            best = (float(correlation[i]), source, i, target)
    _, source, i, target = best  # type: ignore[misc]
    view, whole = source.fine_view(i), target.fine
    contrast = max(source.contrast if i == 0 else _contrast(view), target.contrast, 4.0)
    return max(_matched(view, whole, contrast), _matched(whole, view, contrast))


def _contrast(image: np.ndarray) -> float:
    """The mean distance of an image's pixels from its mean colour, in the worst channel."""
    return float(_worst_channel(np.abs(image - image.mean(axis=(0, 1)))).mean())


def _worst_channel(values: np.ndarray) -> np.ndarray:
    """(h, w, 3) -> (h, w): the largest of each pixel's three values (faster than .max(axis=2))."""
    return np.maximum(np.maximum(values[..., 0], values[..., 1]), values[..., 2])


def _matched(source: np.ndarray, target: np.ndarray, contrast: float) -> float:
    """1 - the worst cell's difference between `target` and `source` matched to it (one gain,
    the median ratio where `target` is not clipped and `source` not dark, the prediction
    clipped; each pixel compared with its prediction's range within one pixel around it),
    relative to `contrast`."""
    x, y = source.reshape(-1), target.reshape(-1)
    usable = (y > 2) & (y < 253) & (x > 8)
    gain = 1.0
    if usable.sum() >= 16:  # else nearly all black or white: match the values as they are
        gain = float(np.median(y[usable] / x[usable]))
    predicted = np.clip(gain * source, 0, 255)
    low, high = _neighbourhood_range(predicted)
    residual = _worst_channel(np.maximum(np.maximum(low - target, target - high), 0))
    side = residual.shape[0]
    cells = residual.reshape(side // CELL, CELL, side // CELL, CELL).mean(axis=(1, 3))
    return 1.0 - float(cells.max()) / contrast


def _neighbourhood_range(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and channel, the least and greatest value within one pixel (3 x 3, edges repeated)."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows_low = np.minimum(np.minimum(padded[:-2], padded[1:-1]), padded[2:])  # (h, w + 2, 3)
    rows_high = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    low = np.minimum(np.minimum(rows_low[:, :-2], rows_low[:, 1:-1]), rows_low[:, 2:])
    high = np.maximum(np.maximum(rows_high[:, :-2], rows_high[:, 1:-1]), rows_high[:, 2:])
    return low, high


def collection_image_reader(collection) -> Callable[[int], Image.Image | None]:
    """Row -> its decoded image, or None when the collection cannot read it back (a URL, a piped
    shard, a file changed or gone since the build)."""
    from latentspace.data.images import ImageDecodeError, decode_image

    ids = collection.meta.column("id").to_pylist()

    def read(row: int) -> Image.Image | None:
        data = collection.read_image_bytes(ids[row])
        if data is None:
            return None
        try:
            return decode_image(data, name=f"item {ids[row]}")
        except ImageDecodeError:
            return None

    return read


# --- the levels --------------------------------------------------------------------------------


def pair_level(
    cosine: float, settings: DuplicateSettings, *, same_bytes: bool = False, pixels: tuple[bool, float] | None = None
) -> Level | None:
    """One pair's level, or None when it is no duplicate. `pixels`: (same decoded pixels, pixel
    agreement) when both images were read again, None when they were not (or could not be)."""
    if same_bytes:
        return "exact"
    if cosine >= settings.near_candidate and pixels is not None:
        same, agreement = pixels
        if same:
            return "exact"
        if agreement >= settings.near_pixels:
            return "near"
    return "similar" if cosine >= settings.similar else None


def compare_pixels(a: Pixels | None, b: Pixels | None) -> tuple[bool, float] | None:
    """(same decoded pixels, pixel agreement), or None when either image could not be read."""
    if a is None or b is None:
        return None
    if a.digest == b.digest:
        return True, 1.0
    return False, pixel_agreement(a, b)


def classify_pairs(
    candidates: dict[tuple[int, int], float],
    settings: DuplicateSettings,
    read_image: Callable[[int], Image.Image | None],
    sha256: list[str | None] | None = None,
) -> tuple[list[Pair], int]:
    """Each candidate pair's level (pairs of no level left out), and how many pairs at
    `near_candidate` or more could not be verified. Images are read once per item, and only
    for pairs at `near_candidate` or more."""
    cache: dict[int, Pixels | None] = {}

    def pixels_of(row: int) -> Pixels | None:
        if row not in cache:
            image = read_image(row)
            cache[row] = read_pixels(image) if image is not None else None
        return cache[row]

    pairs: list[Pair] = []
    unverified = 0
    for (a, b), cosine in sorted(candidates.items()):
        same_bytes = sha256 is not None and sha256[a] is not None and sha256[a] == sha256[b]
        facts = None
        if not same_bytes and cosine >= settings.near_candidate:
            facts = compare_pixels(pixels_of(a), pixels_of(b))
            unverified += facts is None
        level = pair_level(cosine, settings, same_bytes=same_bytes, pixels=facts)
        if level is not None:
            pairs.append(Pair(a, b, cosine, level, 1.0 if same_bytes else facts[1] if facts else None))
    return pairs, unverified


def same_bytes_pairs(sha256: list[str | None]) -> dict[tuple[int, int], float]:
    """Pairs of items with the same file bytes, however many copies (the k nearest neighbours
    would miss some of more than k identical copies)."""
    by_hash: dict[str, list[int]] = {}
    for row, digest in enumerate(sha256):
        if digest is not None:
            by_hash.setdefault(digest, []).append(row)
    pairs = {}
    for rows in by_hash.values():
        for b in rows[1:]:  # a chain joins them all into one group
            pairs[(rows[0], b)] = 1.0
    return pairs


class Components:
    """Rows joined into connected components (union-find with path halving)."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}

    def find(self, row: int) -> int:
        parent = self._parent
        parent.setdefault(row, row)
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    def join(self, a: int, b: int) -> None:
        self._parent[self.find(a)] = self.find(b)

    def rows(self) -> list[int]:
        return list(self._parent)


def group_pairs(pairs: list[Pair]) -> list[Group]:
    """Connected components per level (with the stricter levels' pairs), strictest first,
    each group's rows ascending; a group a stricter level already has is not repeated."""
    components = Components()
    groups: list[Group] = []
    seen: set[tuple[int, ...]] = set()
    for level in LEVELS:  # union-find carried over: each level adds its pairs to the stricter ones'
        for p in pairs:
            if p.level == level:
                components.join(p.a, p.b)
        members: dict[int, list[int]] = {}
        for row in components.rows():
            members.setdefault(components.find(row), []).append(row)
        for rows in sorted((sorted(r) for r in members.values() if len(r) > 1), key=lambda r: r[0]):
            if tuple(rows) not in seen:
                seen.add(tuple(rows))
                groups.append(Group(level, rows))
    return groups


def find_duplicates(collection, settings: DuplicateSettings | None = None) -> DuplicateReport:
    """The duplicate pairs and groups of a `Collection` (see the module docstring)."""
    settings = settings or DuplicateSettings()
    scores, rows, kind = collection_neighbours(collection, settings.k)
    candidates = candidate_pairs(scores, rows, min(settings.similar, settings.near_candidate))
    sha256 = collection.meta.column("sha256").to_pylist()
    for key, cosine in same_bytes_pairs(sha256).items():
        candidates.setdefault(key, cosine)
    pairs, unverified = classify_pairs(candidates, settings, collection_image_reader(collection), sha256)
    groups = group_pairs(pairs)
    columns = {name: collection.meta.column(name).to_pylist() for name in ("id", "path", "url", "shard", "key")}
    for group in groups:
        group.members = [_member(columns, row) for row in group.rows]
    return DuplicateReport(collection.name, len(collection), settings, pairs, groups, unverified, kind)


def _member(columns: dict[str, list], row: int) -> dict[str, Any]:
    out = {"id": columns["id"][row], "path": columns["path"][row]}
    if columns["url"][row] is not None:
        out["url"] = columns["url"][row]
    if columns["shard"][row] is not None:
        out.update(shard=columns["shard"][row], key=columns["key"][row])
    return out
