"""The default corpus: emoji art from two npm packages, one style to train on, the other to test.

`emoji-datasource-twitter` (Twemoji art) and `emoji-datasource-google` (Noto art) ship the same
~1,900 emoji concepts, each named in `package/emoji.json`, drawn in two very different styles.
Training on one style and evaluating zero-shot on the other measures whether an image encoder
learned the concept rather than the drawing; holding a share of concepts out of training
measures whether it generalises to concepts it never saw. `build_emoji_corpus` writes

- `train/shard-*.tar`: webdataset shards of the training style (held-out concepts excluded),
- `eval/<task>/...`: CLIP_benchmark on-disk webdataset tasks in the evaluation style (plus one
  task of held-out concepts in the training style, to separate the two generalisation gaps),
- `eval/suite.yaml`: the task list, and `corpus.json`: parameters, counts and held-out ids.

Packages are pinned by version and published integrity hash (fetched and verified by `data.npm`),
so every build sees the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
import yaml

from latentspace.data.npm import NpmPackageError, fetch_npm_package, local_or_fetched, open_package

EMOJI_PACKAGES: dict[str, tuple[str, str]] = {
    "twitter": (
        "emoji-datasource-twitter@16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "google": (
        "emoji-datasource-google@16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
}

# Art style -> the name used in task names ("emoji_noto_all"), after the font the art comes from.
STYLE_TASK_NAMES = {"google": "noto", "twitter": "twemoji"}

SKIN_TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}

TEMPLATES = ["{c}", "an emoji of {c}", "a {c} emoji", "an icon of {c}", "a drawing of {c}"]

# Bump when the on-disk layout or the sample contents change, so old corpora are rebuilt.
CORPUS_FORMAT = 1

_IMAGE_SIZE = 64


class EmojiPackageError(NpmPackageError):
    """An emoji package lacks what the corpus needs (fetch and integrity errors are NpmPackageError)."""


def fetch_package(style: str, cache_dir: Path) -> Path:
    """The verified, cached tarball of the pinned package for `style` (see data.npm)."""
    spec, integrity = EMOJI_PACKAGES[style]
    return fetch_npm_package(spec, integrity, cache_dir)


# --------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class SkinVariant:
    """A skin-tone rendering of a concept; trained on as the same concept."""

    unified: str
    image: str
    skin_tone: str
    styles: frozenset[str]  # art styles whose package claims to draw it (has_img_<style>)


@dataclass
class EmojiConcept:
    """One emoji concept: a cleaned, unique name plus the captions training may choose from.

    `image`, `styles` and `variants` locate the artwork inside the packages.
    """

    concept_id: int
    unified: str
    name: str
    captions: list[str]
    category: str
    subcategory: str
    image: str = ""
    styles: frozenset[str] = frozenset()
    variants: list[SkinVariant] = field(default_factory=list)


def load_concepts(tgz: Path) -> list[EmojiConcept]:
    """Read the concept list from a package tarball's `package/emoji.json`."""
    return concepts_from_entries(_read_emoji_json(Path(tgz)))


def concepts_from_entries(entries: Iterable[dict]) -> list[EmojiConcept]:
    """Turn raw emoji.json entries into concepts in `sort_order`, ids 0..n-1, names unique."""
    kept = sorted(
        (e for e in entries if _clean_text(e.get("name") or "")),
        key=lambda e: (e.get("sort_order", 0), e["unified"]),
    )
    names = _unique_names(kept)
    return [_concept(i, entry, name) for i, (entry, name) in enumerate(zip(kept, names))]


def _concept(concept_id: int, entry: dict, name: str) -> EmojiConcept:
    return EmojiConcept(
        concept_id=concept_id,
        unified=entry["unified"],
        name=name,
        captions=_captions(name, entry.get("short_names") or [], entry.get("subcategory") or ""),
        category=entry.get("category") or "",
        subcategory=entry.get("subcategory") or "",
        image=entry["image"],
        styles=_styles_with_image(entry),
        variants=[
            SkinVariant(v["unified"], v["image"], _skin_tone_name(code), _styles_with_image(v))
            for code, v in sorted((entry.get("skin_variations") or {}).items())
        ],
    )


def _clean_text(text: str) -> str:
    """Lowercase, normalise punctuation ('&' -> 'and', curly quotes) and whitespace.

    emoji.json mixes Unicode character names in ALL CAPS ("THUMBS UP SIGN") with CLDR names
    ("Antigua & Barbuda Flag"); the text tower should see one consistent spelling.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("&", " and ")
    return " ".join(text.split()).lower()


def _unique_names(entries: list[dict]) -> list[str]:
    """Clean names, made unique so that every class name in a task names one concept.

    Colliding names get their first short name appended ("man in tuxedo (person in tuxedo)");
    anything still colliding gets the code point sequence.
    """
    names = [_clean_text(e["name"]) for e in entries]
    counts = Counter(names)
    for i, entry in enumerate(entries):
        if counts[names[i]] > 1:
            short = _short_name_text((entry.get("short_names") or [""])[0])
            if short and short != names[i]:
                names[i] = f"{names[i]} ({short})"
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if names[i] in seen:
            names[i] = f"{names[i]} ({entry['unified'].lower()})"
        seen.add(names[i])
    return names


def _short_name_text(short_name: str) -> str:
    """`"flag-eg"` / `"man_in_tuxedo"` -> natural text; empty when it has no letters ("+1")."""
    text = _clean_text(short_name.replace("_", " ").replace("-", " "))
    return text if re.search(r"[^\W\d_]", text) else ""


def _captions(name: str, short_names: list[str], subcategory: str) -> list[str]:
    """The clean name first, then short-name variants, then the name with its subcategory."""
    captions = [name]
    for short_name in short_names:
        text = _short_name_text(short_name)
        if text and text not in captions:
            captions.append(text)
    sub = _clean_text(subcategory.replace("-", " "))
    if sub:
        article = "an" if sub[0] in "aeiou" else "a"
        captions.append(f"{name}, {article} {sub}")
    return captions


def _styles_with_image(entry: dict) -> frozenset[str]:
    """Art styles whose package draws this emoji; others may ship a fallback in foreign art."""
    return frozenset(style for style in STYLE_TASK_NAMES if entry.get(f"has_img_{style}"))


def _skin_tone_name(code: str) -> str:
    """`"1F3FD"` -> "medium"; `"1F3FB-1F3FF"` -> "light, dark" (one tone per person)."""
    tones = [SKIN_TONES.get(part.upper(), part.lower()) for part in code.split("-")]
    return ", ".join(dict.fromkeys(tones))


# --------------------------------------------------------------------------- tarball reading


def _read_emoji_json(tgz: Path) -> list[dict]:
    """Stream the tarball only up to emoji.json, which sits near its start."""
    with open_package(tgz) as tar:
        for member in tar:
            if member.name == "package/emoji.json":
                return json.loads(tar.extractfile(member).read())
    raise EmojiPackageError(f"{tgz} has no package/emoji.json; is it an emoji-datasource package?")


def _read_images(tgz: Path, style: str, wanted: set[str]) -> dict[str, bytes]:
    """Return {image file name: PNG bytes} for the wanted 64 px images, in one sequential pass.

    Random access into a gzip stream re-decompresses from the start, so one pass is far cheaper
    than `extractfile` per image. Files absent from the package are simply absent here.
    """
    prefix = f"package/img/{style}/{_IMAGE_SIZE}/"
    images: dict[str, bytes] = {}
    with open_package(tgz) as tar:
        for member in tar:
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and name in wanted and member.isfile():
                images[name] = tar.extractfile(member).read()
    return images


# --------------------------------------------------------------------------- corpus


def build_emoji_corpus(
    out_dir: Path,
    *,
    cache_dir: Path,
    train_style: str = "twitter",
    eval_style: str = "google",
    heldout_fraction: float = 0.2,
    seed: int = 0,
    samples_per_shard: int = 1000,
    include_skin_tones: bool = True,
    tarballs: dict[str, Path] | None = None,
    expected_integrity: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Build (or reuse) the emoji corpus in `out_dir`; return its summary (also `corpus.json`).

    The corpus is written to a temporary sibling directory and renamed into place at the end,
    so a killed build never leaves something that looks complete. If `out_dir/corpus.json`
    already records the same parameters and package hashes, nothing is rebuilt.

    `tarballs` maps a style to a local package tarball, used instead of `npm pack`; it is checked
    against `expected_integrity[style]` (default: the pinned hash in EMOJI_PACKAGES).
    Paths in the summary are relative to `out_dir`; the returned dict adds `out_dir` itself.
    """
    out_dir = Path(out_dir)
    say = progress or (lambda message: None)
    if train_style == eval_style or {train_style, eval_style} - set(STYLE_TASK_NAMES):
        raise ValueError(f"need two different styles out of {sorted(STYLE_TASK_NAMES)}")
    if not 0.0 <= heldout_fraction < 1.0 or samples_per_shard < 1:
        raise ValueError("need 0 <= heldout_fraction < 1 and samples_per_shard >= 1")

    packages = {}
    for style in (train_style, eval_style):
        spec, integrity = EMOJI_PACKAGES[style]
        integrity = (expected_integrity or {}).get(style, integrity)
        packages[style] = {"spec": spec, "integrity": integrity}
    params = {
        "format": CORPUS_FORMAT,
        "train_style": train_style,
        "eval_style": eval_style,
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "samples_per_shard": samples_per_shard,
        "include_skin_tones": include_skin_tones,
        "packages": packages,
    }
    existing = _existing_summary(out_dir, params)
    if existing is not None:
        say(f"emoji corpus in {out_dir} is up to date")
        return existing

    paths = {}
    for style, package in packages.items():
        say(f"verifying the {style} package")
        paths[style] = _local_package(style, package["integrity"], tarballs, cache_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        summary = _build(tmp, params, paths, say)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"emoji corpus written to {out_dir}")
    return {**summary, "out_dir": str(out_dir.resolve())}


def _existing_summary(out_dir: Path, params: dict) -> dict | None:
    """The summary of a finished build with the same parameters, else None."""
    try:
        summary = json.loads((out_dir / "corpus.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("parameters") != params:
        return None
    return {**summary, "out_dir": str(out_dir.resolve())}


def _local_package(
    style: str, integrity: str, tarballs: dict[str, Path] | None, cache_dir: Path
) -> Path:
    """The caller's tarball for `style` if given (verified), else the fetched, cached one."""
    spec = EMOJI_PACKAGES[style][0]
    return local_or_fetched(spec, integrity, (tarballs or {}).get(style), cache_dir)


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Move the finished build into place, replacing only an earlier corpus (or empty dir)."""
    if not out_dir.exists():
        os.replace(new, out_dir)
        return
    if any(out_dir.iterdir()) and not (out_dir / "corpus.json").exists():
        raise FileExistsError(f"{out_dir} exists and is not an emoji corpus; not replacing it")
    old = new.with_name(new.name.replace(".partial-", ".old-"))
    os.replace(out_dir, old)
    os.replace(new, out_dir)
    shutil.rmtree(old)


@dataclass
class _Art:
    """The PNGs of one art style, by image file name."""

    style: str
    images: dict[str, bytes]

    def has(self, image: str, styles: frozenset[str]) -> bool:
        """True when the package both claims to draw the emoji and ships its file."""
        return self.style in styles and image in self.images


def _build(root: Path, params: dict, paths: dict[str, Path], say: Callable[[str], None]) -> dict:
    """Write the whole corpus under `root` and return its summary (written last)."""
    train_style, eval_style = params["train_style"], params["eval_style"]
    say("reading concepts")
    all_concepts = load_concepts(paths[train_style])
    wanted = {c.image for c in all_concepts} | {v.image for c in all_concepts for v in c.variants}
    art = {}
    for style in (train_style, eval_style):
        say(f"reading {style} images")
        art[style] = _Art(style, _read_images(paths[style], style, wanted))

    # A concept needs both styles, so that every class is both learnable and testable.
    missing = {
        c.concept_id: [s for s in (train_style, eval_style) if not art[s].has(c.image, c.styles)]
        for c in all_concepts
    }
    skipped = [c for c in all_concepts if missing[c.concept_id]]
    concepts = [c for c in all_concepts if not missing[c.concept_id]]
    heldout = _choose_heldout(concepts, params["heldout_fraction"], params["seed"])

    say("writing training shards")
    train, missing_variants = _train_samples(
        [c for c in concepts if c.concept_id not in heldout],
        art[train_style],
        params["include_skin_tones"],
    )
    random.Random(params["seed"]).shuffle(train)
    shards = _write_shards(train, root / "train", "shard-{:06d}.tar", params["samples_per_shard"])

    say("writing evaluation tasks")
    tasks = _eval_tasks(concepts, heldout, art[train_style], art[eval_style])
    task_summaries = {
        name: _write_task(root / "eval" / name, task, params["samples_per_shard"])
        for name, task in tasks.items()
    }
    _write_suite(root / "eval" / "suite.yaml", tasks)

    summary = {
        "parameters": params,
        "counts": {
            "concepts_in_package": len(all_concepts),
            "concepts": len(concepts),
            "heldout_concepts": len(heldout),
            "train_concepts": len(concepts) - len(heldout),
            "train_images": len(train),
            "train_shards": len(shards),
            "skipped_concepts": len(skipped),
            "missing_skin_variants": len(missing_variants),
        },
        "heldout_concept_ids": sorted(heldout),
        "skipped_concepts": [
            {"concept_id": c.concept_id, "unified": c.unified, "name": c.name,
             "missing_in": missing[c.concept_id]}
            for c in skipped
        ],
        "missing_skin_variants": missing_variants,
        "train_shards": [str(p.relative_to(root)) for p in shards],
        "eval_suite": "eval/suite.yaml",
        "eval_tasks": task_summaries,
    }
    (root / "corpus.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def _choose_heldout(concepts: list[EmojiConcept], fraction: float, seed: int) -> set[int]:
    """Concept ids held out of training: the `fraction` of concepts ranked first by a seeded hash.

    Ranking by a hash of (seed, code points) rather than by list position keeps a concept's fate
    independent of which other concepts happen to be present.
    """

    def rank(c: EmojiConcept) -> str:
        return hashlib.sha256(f"{seed}:{c.unified}".encode()).hexdigest()

    count = round(fraction * len(concepts))
    return {c.concept_id for c in sorted(concepts, key=rank)[:count]}


def _train_samples(
    concepts: list[EmojiConcept], art: _Art, include_skin_tones: bool
) -> tuple[list[dict], list[str]]:
    """Webdataset samples for the training concepts; also the skin variants lacking artwork."""
    samples, missing = [], []
    for c in concepts:
        samples.append(_train_sample(c, c.unified, art.images[c.image], None))
        for v in c.variants if include_skin_tones else []:
            if art.has(v.image, v.styles):
                samples.append(_train_sample(c, v.unified, art.images[v.image], v.skin_tone))
            else:
                missing.append(v.unified)
    return samples, missing


def _train_sample(c: EmojiConcept, unified: str, png: bytes, skin_tone: str | None) -> dict:
    meta = {
        "concept_id": c.concept_id,
        "unified": unified,
        "name": c.name,
        "captions": c.captions,
        "category": c.category,
        "subcategory": c.subcategory,
        "skin_tone": skin_tone,
    }
    return {
        "__key__": unified.lower(),
        "png": png,
        "txt": c.name.encode(),
        "json": json.dumps(meta, ensure_ascii=False).encode(),
    }


@dataclass
class _Task:
    """An evaluation task before it is written: CLIP_benchmark layout plus suite metadata."""

    type: str  # "zeroshot_classification" | "retrieval"
    description: str
    samples: list[dict]
    classnames: list[str] | None = None


def _eval_tasks(
    concepts: list[EmojiConcept], heldout: set[int], train_art: _Art, eval_art: _Art
) -> dict[str, _Task]:
    """The evaluation suite; tasks without samples (no held-out concepts) are left out."""
    train_name, eval_name = STYLE_TASK_NAMES[train_art.style], STYLE_TASK_NAMES[eval_art.style]
    held = [c for c in concepts if c.concept_id in heldout]
    categorised = [c for c in concepts if c.category != "Component"]
    tasks = {
        f"emoji_{eval_name}_all": _classification(
            concepts, _name, eval_art,
            f"all concepts, {eval_name} art (an art style unseen in training)",
        ),
        f"emoji_{eval_name}_heldout": _classification(
            held, _name, eval_art,
            f"held-out concepts only, {eval_name} art (unseen style and unseen concepts)",
        ),
        f"emoji_{eval_name}_category": _classification(
            categorised, _category, eval_art, f"coarse emoji category, {eval_name} art"
        ),
        f"emoji_{eval_name}_retrieval": _Task(
            "retrieval",
            f"image-text retrieval over all concepts and their captions, {eval_name} art",
            [_eval_sample(c, eval_art, txt="\n".join(c.captions)) for c in concepts],
        ),
        f"emoji_{train_name}_heldout": _classification(
            held, _name, train_art,
            f"held-out concepts only, {train_name} art (seen style, unseen concepts)",
        ),
    }
    return {name: task for name, task in tasks.items() if task.samples}


def _name(c: EmojiConcept) -> str:
    return c.name


def _category(c: EmojiConcept) -> str:
    return _clean_text(c.category)


def _classification(
    concepts: list[EmojiConcept], label: Callable[[EmojiConcept], str], art: _Art, description: str
) -> _Task:
    """A zero-shot classification task; classes in first-appearance order, so stable."""
    classnames = list(dict.fromkeys(label(c) for c in concepts))
    index = {name: i for i, name in enumerate(classnames)}
    samples = [_eval_sample(c, art, cls=str(index[label(c)])) for c in concepts]
    return _Task("zeroshot_classification", description, samples, classnames)


def _eval_sample(c: EmojiConcept, art: _Art, **text: str) -> dict:
    """Base image only: skin variants would add near-duplicate test items."""
    return {
        "__key__": c.unified.lower(),
        "png": art.images[c.image],
        **{k: v.encode() for k, v in text.items()},
    }


def _write_task(task_dir: Path, task: _Task, samples_per_shard: int) -> dict:
    """Write one task in CLIP_benchmark's on-disk webdataset layout."""
    test_dir = task_dir / "test"
    shards = _write_shards(task.samples, test_dir, "{}.tar", samples_per_shard)
    (test_dir / "nshards.txt").write_text(f"{len(shards)}\n")
    kind = "retrieval" if task.type == "retrieval" else "classification"
    (task_dir / "dataset_type.txt").write_text(kind + "\n")
    summary = {"path": f"eval/{task_dir.name}", "type": task.type, "samples": len(task.samples)}
    if task.classnames is not None:
        (task_dir / "classnames.txt").write_text("".join(f"{n}\n" for n in task.classnames))
        (task_dir / "zeroshot_classification_templates.txt").write_text(
            "".join(f"{t}\n" for t in TEMPLATES)
        )
        summary["classes"] = len(task.classnames)
    return summary


def _write_suite(path: Path, tasks: dict[str, _Task]) -> None:
    metric = {"zeroshot_classification": "acc1", "retrieval": "mean_recall@1"}
    suite = {
        "name": "emoji",
        "tasks": [
            {"name": n, "type": t.type, "main_metric": metric[t.type], "description": t.description}
            for n, t in tasks.items()
        ],
    }
    path.write_text(yaml.safe_dump(suite, sort_keys=False))


def _write_shards(samples: list[dict], directory: Path, pattern: str, per_shard: int) -> list[Path]:
    """Write samples in order, `per_shard` per tar; a fixed mtime keeps shards reproducible."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(samples), per_shard):
        path = directory / pattern.format(len(paths))
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
        paths.append(path)
    return paths
