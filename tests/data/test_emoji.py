"""The emoji corpus builder, against a small synthetic npm package (no network, no npm)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from latentspace.data import emoji, npm
from latentspace.data.emoji import EmojiPackageError, build_emoji_corpus, fetch_package, load_concepts
from latentspace.data.npm import IntegrityError, NpmPackageError, verify_integrity

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
    _entry(4, "1F44B", "WAVING HAND SIGN", ["wave"], PEOPLE, "hand-fingers-open",
           variants=["1F3FB", "1F3FD", "1F3FF"]),
    _entry(5, "1F44D", "THUMBS UP SIGN", ["+1", "thumbsup"], PEOPLE, "hand-fingers-closed",
           variants=["1F3FB", "1F3FC"]),
    _entry(6, "1F935", "MAN IN TUXEDO", ["person_in_tuxedo"], PEOPLE, "person-role"),
    _entry(7, "1F935-200D-2642-FE0F", "MAN IN TUXEDO", ["man_in_tuxedo"], PEOPLE, "person-role"),
    _entry(8, "1F91D", "HANDSHAKE", ["handshake"], PEOPLE, "hands",
           variants=["1F3FB-1F3FF", "1F3FD-1F3FD"]),
    _entry(9, "1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", ["skin-tone-2"], "Component",
           "skin-tone"),
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


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    return {s: _make_package(root / f"emoji-datasource-{s}-16.0.0.tgz", s) for s in STYLES}


@pytest.fixture(scope="module")
def integrity(packages) -> dict[str, str]:
    return {style: _integrity(path) for style, path in packages.items()}


def _build(out_dir: Path, packages, integrity, **kwargs) -> dict:
    return build_emoji_corpus(
        out_dir,
        cache_dir=out_dir.parent / "cache",
        tarballs=packages,
        expected_integrity=integrity,
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


def _by_unified(packages) -> dict[str, emoji.EmojiConcept]:
    """Sample key (base or skin variant) -> its concept."""
    concepts = load_concepts(packages["twitter"])
    keys = {c.unified.lower(): c for c in concepts}
    keys.update({v.unified.lower(): c for c in concepts for v in c.variants})
    return keys


# --------------------------------------------------------------------------- integrity, fetching
# (fetching itself is tested in test_npm.py; here, that the emoji builder uses it)


def test_truncated_package_raises_clear_errors(tmp_path, packages, integrity):
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(packages["google"].read_bytes()[: packages["google"].stat().st_size // 2])
    with pytest.raises(IntegrityError):
        verify_integrity(truncated, integrity["google"])
    with pytest.raises(NpmPackageError, match="truncated or corrupt"):
        emoji._read_images(truncated, "google", {"1f600.png"})
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


def test_fetch_package_uses_the_pinned_spec_and_cache(tmp_path, packages, integrity, monkeypatch):
    monkeypatch.setitem(emoji.EMOJI_PACKAGES, "twitter", ("emoji-datasource-twitter@16.0.0", integrity["twitter"]))
    cached = tmp_path / "emoji-datasource-twitter-16.0.0.tgz"
    cached.write_bytes(packages["twitter"].read_bytes())
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)  # npm must not be needed
    assert fetch_package("twitter", tmp_path) == cached


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
    assert json.loads((out_dir / "corpus.json").read_text()) == {
        k: v for k, v in summary.items() if k != "out_dir"
    }
    assert summary["train_shards"] and all((out_dir / p).exists() for p in summary["train_shards"])
    suite = yaml.safe_load((out_dir / "eval" / "suite.yaml").read_text())
    assert suite["name"] == "emoji"
    assert [t["name"] for t in suite["tasks"]] == [
        "emoji_noto_all",
        "emoji_noto_heldout",
        "emoji_noto_category",
        "emoji_noto_retrieval",
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
    samples = _train(out_dir) + _task(out_dir, "emoji_noto_all")[1]
    keys = {s["__key__"] for s in samples}
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
        concept = concepts[s["__key__"]]
        assert s["meta"]["concept_id"] == concept.concept_id
        assert s["txt"].decode() == concept.name == s["meta"]["captions"][0]
        assert s["meta"]["unified"].lower() == s["__key__"]
        assert s["png"] == twitter[f"{s['__key__']}.png"]  # original bytes, train style
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
    assert classnames == ["smileys and emotion", "people and body", "food and drink", "flags",
                          "animals and nature", "travel and places"]
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
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["corpus", "other"]


def test_refuses_to_replace_a_foreign_directory(tmp_path, packages, integrity):
    out_dir = tmp_path / "precious"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        _build(out_dir, packages, integrity)
    assert (out_dir / "notes.txt").read_text() == "keep me"
