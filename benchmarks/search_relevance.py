"""Calibrated relevance on real emoji: does a query for a concept the collection holds get a hit
above the bar, and does a query for a concept it lacks get "nothing here"?

    PYTHONPATH=src .venv/bin/python benchmarks/search_relevance.py [--model artifacts/quickstart/model]
        [--scale 100000]

Two collections, built with `build_collection` (which calibrates them) under
artifacts/bench/search_relevance/, each holding one image per training concept of the emoji
corpus and none of the held-out concepts (artifacts/emoji/eval/*_heldout):

- noto: the Noto images of the training shards (artifacts/emoji/train, no skin-tone variants):
  the style the model was trained on;
- openmoji: the OpenMoji images of artifacts/emoji/eval/emoji_openmoji_all whose concepts are
  not held out: a style the model never saw.

Queries are concept names (artifacts/emoji/eval/emoji_openmoji_all/classnames.txt): present =
every training concept (its right item: the image of a concept of that name), absent = every
held-out concept whose name no training concept shares. A query "answers something" when its
best hit's relevance reaches the threshold. Per method (raw cosine; "null": the raw score against
the bank's best scores; "standardised": the per-query standardised score against the bank's
standardised best scores) it prints the AUROC of the best hit's value (present vs absent), a few
ROC points, and at the default threshold: the share of absent queries answered "nothing" and the
share of present queries whose right item is in the top K above the threshold. Then the same for
image queries: the OpenMoji image of each concept searched in the Noto collection (held-out
concepts' images are absent queries), with the text-query calibration.

--scale N also measures what calibrating costs at N rows: N random unit vectors written as parts
of a collection, then `relevance.refresh` with the model (read the parts, embed the bank, one
pass of statistics), timed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402  (benchmarks/machine.py: the machine lines)
from weighted_search import noto_training_samples  # noqa: E402

from latentspace.collections import Collection, build_collection, relevance, store  # noqa: E402

ROOT = Path("artifacts/emoji")
EVAL = ROOT / "eval"
WORK = Path("artifacts/bench/search_relevance")
K = 10


def concept_names() -> list[str]:
    return (EVAL / "emoji_openmoji_all" / "classnames.txt").read_text().splitlines()


def heldout_ids() -> set[int]:
    return set(json.loads((ROOT / "corpus.json").read_text())["heldout_concept_ids"])


def _save(folder: Path, name: str, data: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return f"{folder.name}/{name}"


def write_table(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "concept"])
        writer.writerows(rows)
    return path


def noto_table(out: Path, held: set[int], names: list[str]) -> Path:
    """One Noto image per training concept (no skin tones), captioned with its concept name."""
    table = out / "noto.csv"
    if table.exists():
        return table
    rows: dict[int, tuple[str, str, int]] = {}
    for key, meta, data in noto_training_samples():
        concept = int(meta["concept_id"])
        if concept not in held and concept not in rows:
            rows[concept] = (_save(out / "noto", f"{key}.png", data), names[concept], concept)
    return write_table(table, [rows[c] for c in sorted(rows)])


def openmoji_tables(out: Path, held: set[int], names: list[str]) -> tuple[Path, Path]:
    """The OpenMoji images: training concepts (the collection) and held-out ones (image queries)."""
    present, absent = out / "openmoji.csv", out / "openmoji_heldout.csv"
    if present.exists() and absent.exists():
        return present, absent
    kept: list[tuple[str, str, int]] = []
    gone: list[tuple[str, str, int]] = []
    for shard in sorted((EVAL / "emoji_openmoji_all" / "test").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if not name.endswith(".png"):
                    continue
                key = name.removesuffix(".png")
                concept = int(tar.extractfile(members[key + ".cls"]).read())  # type: ignore[union-attr]
                data = tar.extractfile(members[name]).read()  # type: ignore[union-attr]
                folder = "openmoji_heldout" if concept in held else "openmoji"
                row = (_save(out / folder, f"{key}.png", data), names[concept], concept)
                (gone if concept in held else kept).append(row)
    return write_table(present, kept), write_table(absent, gone)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive's value > a negative's), ties counting half."""
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # average ranks over ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    wins = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(wins / (len(positive) * len(negative)))


METHODS = ("cosine", "null", "standardised")
EXAMPLES = ("a red heart", "an x-ray of a broken femur", "a cat", "a spreadsheet", "a car", "a wedding photo")
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


class Standardised:
    """The candidate that lost: a score standardised against its query's scores over the whole
    collection, z = (score - q.mean) / sqrt(q' Cov q), then placed among the bank's standardised
    best scores (the same `share_beaten`). Computed here from the collection's vectors."""

    def __init__(self, vectors: np.ndarray, bank: np.ndarray):
        x = vectors.astype(np.float64)
        self.mean = x.mean(axis=0)
        self.cov = np.cov(x, rowvar=False, bias=True)
        best = (bank @ vectors.T).max(axis=1)
        self.null = np.sort([self.z(q, np.array([b]))[0] for q, b in zip(bank, best)])

    def z(self, query: np.ndarray, scores: np.ndarray) -> np.ndarray:
        q = query.astype(np.float64)
        return (scores - q @ self.mean) / max(float(np.sqrt(q @ self.cov @ q)), 1e-6)

    def relevance(self, query: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return relevance.share_beaten(self.z(query, scores), self.null)


def vectors(collection: Collection) -> np.ndarray:
    return np.stack([collection.vector(i) for i in collection.meta.column("id").to_pylist()])


def judge(
    collection: Collection,
    standardised: Standardised,
    queries: np.ndarray,
    right: list[set[str]] | None,
    names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per query: the best hit's raw score and relevances, and (with `right`, the right items'
    captions per query) the right item's best rank in the top K (K when absent) and relevances;
    with `names` (the queries' texts), whether the best hit's name shares a word of 4+ letters
    with the query (an absent concept answered by a near namesake: "baby chick" by "hatching
    chick")."""
    out: dict[str, list[float]] = {f"{w}_{m}": [] for w in ("best", "right") for m in METHODS}
    out["right_rank"], out["namesake"] = [], []
    for i, query in enumerate(queries):
        hits = collection.search_vector(query, K, min_relevance=0.0)
        scores = np.array([h.score for h in hits])
        values = {
            "cosine": scores,
            "null": np.array([h.relevance for h in hits]),  # what the collection answers
            "standardised": standardised.relevance(query, scores),
        }
        for method, v in values.items():
            out[f"best_{method}"].append(float(v[0]))
        if names is not None:
            words = {w for w in names[i].lower().replace(",", " ").split() if len(w) > 3}
            out["namesake"].append(float(any(w in (hits[0].caption or "").lower() for w in words)))
        if right is not None:
            ranks = [r for r, h in enumerate(hits) if h.caption in right[i]]
            rank = ranks[0] if ranks else K
            out["right_rank"].append(rank)
            for method, v in values.items():
                out[f"right_{method}"].append(float(v[rank]) if ranks else -np.inf)
    return {key: np.asarray(value) for key, value in out.items()}


def report(label: str, present: dict[str, np.ndarray], absent: dict[str, np.ndarray], threshold: float) -> None:
    found = present["right_rank"] < K
    print(
        f"\n{label}: {len(present['best_cosine'])} present queries (right item in the top {K}: "
        f"{found.mean():.3f}), {len(absent['best_cosine'])} absent queries"
    )
    for method in METHODS:
        area = auroc(present[f"best_{method}"], absent[f"best_{method}"])
        print(f"  {method:12s} AUROC {area:.3f}")
        print(f"    machine: relevance {label} method={method} auroc={area:.4f}")
    for method in METHODS[1:]:
        points = []
        for t in THRESHOLDS:
            tpr = float((present[f"best_{method}"] >= t).mean())
            fpr = float((absent[f"best_{method}"] >= t).mean())
            points.append(f"{t:.2f}: FPR {fpr:.3f} TPR {tpr:.3f}")
        print(f"  ROC {method} (threshold: absent answered / present answered): " + "; ".join(points))
    for method in METHODS[1:]:
        for t in THRESHOLDS:
            nothing = float((absent[f"best_{method}"] < t).mean())
            shows = float(((present["right_rank"] < K) & (present[f"right_{method}"] >= t)).mean())
            answered = float((present[f"best_{method}"] >= t).mean())
            mark = " (default)" if t == threshold else ""
            if len(absent["namesake"]) and t == threshold:
                answered_absent = absent[f"best_{method}"] >= t
                namesakes = int((answered_absent & (absent["namesake"] > 0)).sum())
                mark += (
                    f" [{namesakes} of the {int(answered_absent.sum())} absent queries answered have a namesake on top]"
                )
            print(
                f"  min_relevance {t}{mark} ({method}): absent answered 'nothing' {nothing:.3f}; present with the "
                f"right item shown {shows:.3f} (answered at all {answered:.3f})"
            )
            print(
                f"    machine: relevance {label} method={method} threshold={t} absent_nothing={nothing:.4f} "
                f"present_right_shown={shows:.4f} present_answered={answered:.4f}"
            )


def text_queries(model, names: list[str], held: set[int], present_ids: set[int]):
    present_names = sorted({names[c] for c in present_ids})
    absent_names = sorted({names[c] for c in held} - set(present_names))
    vectors = model.embed_texts(present_names + absent_names, "search_query").numpy()
    return present_names, vectors[: len(present_names)], absent_names, vectors[len(present_names) :]


def scale_cost(model, rows: int) -> None:
    """Calibrating a collection of `rows` random unit vectors (written as parts), timed."""
    import shutil

    directory = WORK / f"scale-{rows}"
    shutil.rmtree(directory, ignore_errors=True)
    dim = model.identity.dim
    manifest = store.Manifest(name="scale", model="bench", identity=model.identity, dtype="float32", settings={})
    rng = np.random.default_rng(0)
    per_part = 8192
    for ordinal, start in enumerate(range(0, rows, per_part)):
        n = min(per_part, rows - start)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        columns = {f.name: [None] * n for f in store.META_FIELDS}
        columns["seq"] = [store.seq_of(ordinal, i) for i in range(n)]
        columns["id"] = [f"{ordinal:08x}{i:08x}" for i in range(n)]
        columns["source"], columns["key"] = [0] * n, [f"{ordinal}/{i}" for i in range(n)]
        name = store.part_name(ordinal)
        store.write_part(store.part_path(directory, name), columns, vectors, "float32", {"dim": dim})
        manifest.parts.append(store.PartEntry(name, ordinal, 0, "files", n))
    manifest.save(directory)
    started = time.perf_counter()
    done = relevance.refresh(directory, manifest, model)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = relevance.refresh(directory, manifest, model)
    unchanged = time.perf_counter() - started
    print(
        f"\ncalibrating {rows} rows of {dim} dims: {seconds:.2f} s ({done}); a build with nothing new: "
        f"{unchanged * 1000:.0f} ms ({again})"
    )
    print(f"    machine: relevance calibrate rows={rows} seconds={seconds:.3f} unchanged_seconds={unchanged:.3f}")
    shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="artifacts/quickstart/model")
    parser.add_argument("--threshold", type=float, default=relevance.DEFAULT_MIN_RELEVANCE)
    parser.add_argument("--scale", type=int, default=0, help="also time calibrating this many rows")
    args = parser.parse_args()
    print(describe(), flush=True)

    from latentspace.models.load import load

    WORK.mkdir(parents=True, exist_ok=True)
    names, held = concept_names(), heldout_ids()
    model = load(args.model)
    collections = {}
    tables = {"noto": noto_table(WORK, held, names)}
    tables["openmoji"], held_images = openmoji_tables(WORK, held, names)
    for label, table in tables.items():
        built = build_collection(WORK / label, model, str(table), name=label)
        collections[label] = Collection.open(WORK / label)
        print(
            f"collection {label}: {built.items} items ({built.images_embedded} embedded this run), "
            f"relevance: {built.relevance} in {built.relevance_seconds:.2f} s"
        )
    print(f"model {args.model}; bank: {len(relevance.bank_texts())} texts; default threshold {args.threshold}")

    bank = model.embed_texts(relevance.bank_texts(), "search_query").numpy()
    standardised = {label: Standardised(vectors(c), bank) for label, c in collections.items()}
    judged = {}
    for label, collection in collections.items():
        captions = collection.meta.column("caption").to_pylist()
        ids = {names.index(c) for c in captions}
        present_names, present_vectors, absent_names, absent_vectors = text_queries(model, names, held, ids)
        present = judge(collection, standardised[label], present_vectors, [{n} for n in present_names])
        absent = judge(collection, standardised[label], absent_vectors, None, absent_names)
        report(f"{label}/text", present, absent, args.threshold)
        judged[label] = present, absent

    # one bar for both collections: relevance at the default vs the cosine that bar means on noto
    grid = np.linspace(-1.0, 1.0, 200001)
    cosine_at = {
        label: float(grid[np.searchsorted(c.calibration.relevance(grid), args.threshold)])  # type: ignore[union-attr]
        for label, c in collections.items()
    }
    print(
        f"\nthe default bar {args.threshold} is cosine {cosine_at['noto']:.3f} on noto and "
        f"{cosine_at['openmoji']:.3f} on openmoji; the noto cosine as a fixed min_score on openmoji:"
    )
    present, absent = judged["openmoji"]
    bar = cosine_at["noto"]
    nothing = float((absent["best_cosine"] < bar).mean())
    shows = float(((present["right_rank"] < K) & (present["right_cosine"] >= bar)).mean())
    print(
        f"  openmoji, min_score {bar:.3f}: absent answered 'nothing' {nothing:.3f}; "
        f"present with the right item shown {shows:.3f}"
    )
    print(
        f"    machine: relevance openmoji/text fixed_cosine={bar:.4f} absent_nothing={nothing:.4f} "
        f"present_right_shown={shows:.4f}"
    )

    # the two queries, and a few more, as a user meets them (default bar)
    for label, collection in collections.items():
        for text in EXAMPLES:
            hits = collection.search_text(model, text, k=20)
            print(
                f"  {label}: {text!r}: best score {hits[0].score:.3f}, relevance {hits[0].relevance:.3f}, "
                f"matches {hits.matches} of k=20 (best: {hits[0].caption})"
            )

    # image queries: OpenMoji images against the Noto collection
    omoji = collections["openmoji"]
    held_dir = WORK / "openmoji_heldout_queries"
    build_collection(held_dir, model, str(held_images), name="openmoji_heldout_queries")
    queries = Collection.open(held_dir)
    noto = collections["noto"]
    noto_names = set(noto.meta.column("caption").to_pylist())

    def vectors_of(c: Collection, keep) -> tuple[np.ndarray, list[str]]:
        ids, captions = c.meta.column("id").to_pylist(), c.meta.column("caption").to_pylist()
        rows = [(c.vector(i), caption) for i, caption in zip(ids, captions) if keep(caption)]
        return np.stack([r[0] for r in rows]), [r[1] for r in rows]

    present_vectors, present_captions = vectors_of(omoji, lambda cap: cap in noto_names)
    absent_vectors, _ = vectors_of(queries, lambda cap: cap not in noto_names)
    present = judge(noto, standardised["noto"], present_vectors, [{c} for c in present_captions])
    absent = judge(noto, standardised["noto"], absent_vectors, None)
    report("noto/openmoji-image", present, absent, args.threshold)

    if args.scale:
        scale_cost(model, args.scale)


if __name__ == "__main__":
    main()
