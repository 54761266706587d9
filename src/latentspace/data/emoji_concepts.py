"""The emoji concepts and their art, as the npm emoji-datasource packages describe them.

`emoji-datasource-twitter` (Twemoji art) and `emoji-datasource-google` (Noto art) ship the same
emoji, each named in `package/emoji.json` with its code points, short names, category and skin
tone variants, and its 64 px PNG under `package/img/<style>/64/`. This module turns those entries
into `EmojiConcept`s (clean, unique names and the captions training may choose from), reads the
art out of a package tarball in one pass, and chooses which concepts are held out of training.
data/emoji.py builds the corpus from them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from latentspace.data.npm import NpmPackageError, open_package
from latentspace.progress import NullProgress, Progress

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


SKIN_TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}


# The art read from the packages is this many pixels square (OpenMoji is rendered at the same).
IMAGE_SIZE = 64


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
        (e for e in entries if clean_text(e.get("name") or "")),
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


def clean_text(text: str) -> str:
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
    names = [clean_text(e["name"]) for e in entries]
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
    text = clean_text(short_name.replace("_", " ").replace("-", " "))
    return text if re.search(r"[^\W\d_]", text) else ""


def _captions(name: str, short_names: list[str], subcategory: str) -> list[str]:
    """The clean name first, then short-name variants, then the name with its subcategory."""
    captions = [name]
    for short_name in short_names:
        text = _short_name_text(short_name)
        if text and text not in captions:
            captions.append(text)
    sub = clean_text(subcategory.replace("-", " "))
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


def read_images(tgz: Path, style: str, wanted: set[str], progress: Progress | None = None) -> dict[str, bytes]:
    """Return {image file name: PNG bytes} for the wanted 64 px images, in one sequential pass.

    Random access into a gzip stream re-decompresses from the start, so one pass is far cheaper
    than `extractfile` per image. Files absent from the package are simply absent here (so the
    count `progress` shows may end short of the wanted total).
    """
    prefix = f"package/img/{style}/{IMAGE_SIZE}/"
    images: dict[str, bytes] = {}
    progress = progress or NullProgress()
    with open_package(tgz) as tar:
        for member in tar:
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and name in wanted and member.isfile():
                images[name] = tar.extractfile(member).read()
                progress.advance()
    return images


# --------------------------------------------------------------------------- held out of training


def choose_heldout(concepts: list[EmojiConcept], fraction: float, seed: int) -> set[int]:
    """Concept ids held out of training: the `fraction` of concepts ranked first by a seeded hash.

    Ranking by a hash of (seed, code points) rather than by list position keeps a concept's fate
    independent of which other concepts happen to be present.
    """

    def rank(c: EmojiConcept) -> str:
        return hashlib.sha256(f"{seed}:{c.unified}".encode()).hexdigest()

    count = round(fraction * len(concepts))
    return {c.concept_id for c in sorted(concepts, key=rank)[:count]}
