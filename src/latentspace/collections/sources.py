"""Where a collection's images come from: enumerate items, group them into units, read them.

Three kinds of source, told apart by what `--images` names:

    a folder            every file with an image extension below it (recursively; hidden files
                        and folders are left out), keyed by its path relative to the folder
    webdataset shards   img2dataset / webdataset tar files: a path, a brace pattern
                        (`shard-{000000..000009}.tar`), a `::` list or `pipe:COMMAND`
    a table             a .parquet or .csv file with a `path`, `url` or `image` column (and
                        optionally `caption` or `text`); relative paths are read from the
                        table's folder, http(s) values are URLs

A source has a stable identity (`Source.location`: the absolute folder or table path, or the
shard spec), and every item a key within it (relative path; shard URL + sample key; the path or
URL written in the table). An item's id in the collection is a hash of (location, key), so the
same file keeps its id across builds.

Scanning is cheap and touches no pixels: a folder is walked and stat'ed, a table read, a shard
list expanded and stat'ed. The build decides from the scan what to embed (build.py); the
reading here happens inside one *unit* (a batch of files, or one shard), which is a plain JSON
description, so whoever runs a unit (this process, or later a Ray actor) reads the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from latentspace.data.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from latentspace.data.fetch import BlockingFetcher

SourceKind = Literal["folder", "shards", "table"]
TABLE_SUFFIXES = (".parquet", ".csv")
PATH_COLUMNS = ("path", "url", "image")
CAPTION_COLUMNS = ("caption", "text")
# A shard's samples are numbered within the shard; this bounds how many one shard may hold
# (row sequence numbers are part ordinal * 2**20 + position, see store.py).
MAX_ITEMS_PER_UNIT = 1 << 20


class SourceError(ValueError):
    """A source that cannot be read as a whole (not found, unknown format, no usable column)."""


class UrlsNotAllowed(SourceError):
    """The source lists image URLs but URL fetching was not turned on."""


def item_id(location: str, key: str) -> str:
    """An item's id: stable for the same (source, key), URL-safe, 16 hex digits."""
    return hashlib.sha256(f"{location}\0{key}".encode()).hexdigest()[:16]


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


@dataclass
class FileItem:
    """One file or URL of a folder or table source, as scanned (JSON-serialisable)."""

    key: str
    path: str | None = None  # absolute local path
    url: str | None = None
    caption: str | None = None
    size: int | None = None  # None for URLs (unknown until fetched)
    mtime_ns: int | None = None


@dataclass
class ShardItem:
    """One shard of a shard source; its stat is None when it is not a local file (pipe:)."""

    url: str
    size: int | None = None
    mtime_ns: int | None = None


@dataclass
class Skip:
    """An item left out of the collection, and why. Listed in skipped.jsonl."""

    key: str
    reason: str
    path: str | None = None
    url: str | None = None
    shard: str | None = None
    size: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Scan:
    """What a source holds now: items (files/URLs) or shards, and what was unusable already."""

    items: list[FileItem] = field(default_factory=list)
    shards: list[ShardItem] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    location: str  # stable identity: absolute folder/table path, or the shard spec as given
    spec: str  # what the user passed

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.location, "spec": self.spec}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Source:
        return cls(d["kind"], d["location"], d.get("spec", d["location"]))


def open_source(spec: str | os.PathLike) -> Source:
    """The source `spec` names (see the module docstring), or a SourceError saying what it
    should be."""
    text = str(spec)
    if text.startswith(("http://", "https://")):
        raise SourceError(
            f"{text!r}: shards are read from local paths or 'pipe:COMMAND' (e.g. 'pipe:curl -s URL'); "
            "image URLs belong in a table (a .csv or .parquet with a url column) with --allow-urls"
        )
    if text.startswith("pipe:") or "{" in text or "::" in text:
        return Source("shards", _canonical_shards(text), text)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source("folder", str(path.resolve()), text)
    if path.is_file():
        if path.suffix.lower() == ".tar":
            return Source("shards", str(path.resolve()), text)
        if path.suffix.lower() in TABLE_SUFFIXES:
            return Source("table", str(path.resolve()), text)
        raise SourceError(
            f"{text!r} is a {path.suffix or 'suffix-less'} file; give a folder of images, webdataset "
            f"shards (.tar, a brace pattern or pipe:) or a table ({', '.join(TABLE_SUFFIXES)})"
        )
    raise SourceError(
        f"image source {text!r} does not exist; give a folder, webdataset shards or a .csv/.parquet table"
    )


def _canonical_shards(spec: str) -> str:
    """The shard spec with local paths made absolute, so ids do not depend on the directory the
    build was started from."""
    if spec.startswith("pipe:"):
        return spec
    return "::".join(str(Path(part).expanduser().absolute()) for part in spec.split("::"))


def scan(source: Source, *, allow_urls: bool = False) -> Scan:
    if source.kind == "folder":
        return _scan_folder(Path(source.location))
    if source.kind == "table":
        return _scan_table(Path(source.location), allow_urls)
    return _scan_shards(source.location)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _scan_folder(root: Path) -> Scan:
    out = Scan()
    extensions = {f".{e}" for e in IMAGE_EXTENSIONS}

    def walk_error(error: OSError) -> None:
        key = os.path.relpath(error.filename, root) if error.filename else "?"
        out.skipped.append(Skip(key=key, path=error.filename, reason=f"unreadable folder: {error.strerror or error}"))

    for folder, dirs, files in os.walk(root, onerror=walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in extensions:
                continue
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            try:
                size, mtime = _stat(path)
            except OSError as e:  # a dangling symlink, a file removed while we walk
                out.skipped.append(Skip(key=key, path=str(path), reason=f"unreadable: {e.strerror or e}"))
                continue
            out.items.append(FileItem(key=key, path=str(path), size=size, mtime_ns=mtime))
    out.items.sort(key=lambda item: item.key)
    return out


def _column(names: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {n.lower(): n for n in names}
    return next((lowered[w] for w in wanted if w in lowered), None)


def _scan_table(table_path: Path, allow_urls: bool) -> Scan:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(table_path) if table_path.suffix.lower() == ".parquet" else pcsv.read_csv(table_path)
    except Exception as e:  # pyarrow raises its own error types for malformed files
        raise SourceError(f"cannot read table {table_path}: {e}") from e
    path_col = _column(table.column_names, PATH_COLUMNS)
    if path_col is None:
        raise SourceError(
            f"table {table_path} has no {', '.join(PATH_COLUMNS)} column (its columns: "
            f"{', '.join(table.column_names)}); name the column of image paths or URLs one of those"
        )
    caption_col = _column(table.column_names, CAPTION_COLUMNS)
    values = table.column(path_col).to_pylist()
    captions = table.column(caption_col).to_pylist() if caption_col else [None] * len(values)
    out, seen = Scan(), {}
    for row, (value, caption) in enumerate(zip(values, captions)):
        value = "" if value is None else str(value).strip()
        caption = None if caption is None else str(caption)
        if not value:
            out.skipped.append(Skip(key=f"row {row}", reason=f"row {row}: empty {path_col}"))
            continue
        if value in seen:
            out.skipped.append(Skip(key=f"row {row}", reason=f"row {row}: repeats {value!r} of row {seen[value]}"))
            continue
        seen[value] = row
        if is_url(value):
            out.items.append(FileItem(key=value, url=value, caption=caption))
            continue
        if "://" in value:
            out.skipped.append(Skip(key=value, url=value, reason="only http(s) URLs and local paths are read"))
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else table_path.parent / path
        try:
            size, mtime = _stat(path)
        except OSError as e:
            out.skipped.append(Skip(key=value, path=str(path), reason=f"unreadable: {e.strerror or e}"))
            continue
        out.items.append(FileItem(key=value, path=str(path), caption=caption, size=size, mtime_ns=mtime))
    urls = sum(item.url is not None for item in out.items)
    if urls and not allow_urls:
        raise UrlsNotAllowed(
            f"table {table_path} lists {urls} image URL(s); fetching them is off. Pass --allow-urls "
            "to fetch them (with the server's safeguards: public addresses only, size and time limits)"
        )
    out.items.sort(key=lambda item: item.key)
    return out


def _scan_shards(spec: str) -> Scan:
    from latentspace.data.shards import expand_urls

    try:
        urls = expand_urls(spec)
    except FileNotFoundError as e:
        raise SourceError(str(e)) from e
    out = Scan()
    for url in urls:
        if url.startswith("pipe:"):
            out.shards.append(ShardItem(url=url))
            continue
        try:
            size, mtime = _stat(Path(url))
        except OSError as e:
            raise SourceError(f"shard {url}: {e.strerror or e}") from e
        out.shards.append(ShardItem(url=url, size=size, mtime_ns=mtime))
    return out


# --- reading a unit's items ------------------------------------------------------------------


@dataclass
class Record:
    """One item of a unit on its way to the model. `read()` returns its bytes (run on a worker
    thread: file reads and URL fetches overlap with the forward); `error` is set instead when
    the item could not be read at all (a shard that broke off)."""

    meta: dict[str, Any]
    read: Callable[[], bytes] | None = None
    error: str | None = None


def file_records(items: list[FileItem], urls: BlockingFetcher | None) -> Iterator[Record]:
    """A files unit's items, in order; each record's meta carries its `index` in the unit."""
    for index, item in enumerate(items):
        meta = {
            "key": item.key,
            "index": index,
            "path": item.path,
            "url": item.url,
            "caption": item.caption,
            "size": item.size,
            "mtime_ns": item.mtime_ns,
        }
        if item.url:
            if urls is None:
                yield Record(meta, error="URL fetching is off (pass --allow-urls)")
                continue
            yield Record(meta, read=lambda u=item.url: urls.fetch(u))
        elif item.path is not None:
            yield Record(meta, read=lambda p=item.path: Path(p).read_bytes())
        else:
            yield Record(meta, error="the item names neither a path nor a URL")


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


def shard_records(url: str) -> Iterator[Record]:
    """The samples of one shard in order, each with its image member's byte offset and length
    (so a local shard's image can be read back directly). A shard that breaks off yields one
    final Record with `error` set; what was read before it stays."""
    from webdataset.gopen import gopen

    def emit(key: str, members: dict[str, tuple[bytes, int, int]], position: int) -> Record:
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        meta: dict[str, Any] = {"key": key, "shard": url, "position": position}
        caption = _sample_caption(members)
        meta["caption"] = caption
        meta["url"] = _sample_url(members)
        if image_ext is None:
            return Record(meta, error=f"sample has no image (members: {', '.join(sorted(members)) or 'none'})")
        data, offset, length = members[image_ext]
        meta.update(offset=offset, length=length)
        return Record(meta, read=lambda: data)

    position = 0
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # gopen raises plain exceptions for a failed pipe or a missing file
        yield Record({"key": "<shard>", "shard": url, "position": 0}, error=f"cannot open shard: {e}")
        return
    key, members = None, {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_member(member.name)
                if key is not None and k != key:
                    yield emit(key, members, position)
                    position, members = position + 1, {}
                key = k
                extracted = tar.extractfile(member)
                data = extracted.read() if extracted else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short ({len(data)} of {member.size} bytes)")
                members[ext] = (data, member.offset_data, member.size)
            end = tar.offset
        if not url.startswith("pipe:") and os.path.getsize(url) < end + 2 * tarfile.BLOCKSIZE:
            # a tar ends with two zero blocks; without them the file was cut between members
            raise tarfile.ReadError("the file ends without the end-of-archive marker (truncated)")
        if key is not None:
            yield emit(key, members, position)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        # Truncated or corrupt tar: keep what was read before; the samples after the break are
        # lost (a tar has no index to resynchronise on).
        yield Record(
            {"key": f"<unreadable after {key}>", "shard": url, "position": position + 1},
            error=f"shard unreadable after {position} sample(s): {type(e).__name__}: {e}",
        )
    finally:
        try:
            stream.close()
        except Exception:  # a pipe whose command failed reports it on close; already counted
            pass


def _sample_caption(members: dict[str, tuple[bytes, int, int]]) -> str | None:
    import json

    if "txt" in members:
        return members["txt"][0].decode("utf-8", errors="replace").strip() or None
    if "json" in members:
        try:
            caption = json.loads(members["json"][0]).get("caption")
        except (ValueError, AttributeError):
            return None
        return caption if isinstance(caption, str) and caption.strip() else None
    return None


def _sample_url(members: dict[str, tuple[bytes, int, int]]) -> str | None:
    """The original image URL img2dataset records in the sample's json, if any."""
    import json

    if "json" not in members:
        return None
    try:
        url = json.loads(members["json"][0]).get("url")
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def read_shard_member(shard: str, offset: int, length: int) -> bytes | None:
    """The bytes of one tar member of a local shard (None for pipe: shards, which cannot seek)."""
    if shard.startswith("pipe:"):
        return None
    with open(shard, "rb") as f:
        f.seek(offset)
        return f.read(length)
