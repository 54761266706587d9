"""Files replaced whole: a reader, or the next run after a crash, sees the old content or the new,
never a half-written file.

The new content is written to a temporary file in the target's own directory (the same file
system, so the rename is atomic) and renamed over the target once it is complete. An exception
removes the temporary file and leaves the target as it was. A process killed mid-write leaves
`.<name>.tmp-<pid>-<hex>` behind; directories that may hold such leftovers sweep `.*.tmp-*`
(collection staging and index folders do).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write the new file at; when the block ends
    without an exception it replaces `target`, otherwise it is deleted and `target` is untouched.

    `durable`: fsync the file before the rename and the directory after it, so the new content
    also survives a power cut, not only a killed process (checkpoints, collection files)."""
    target = Path(target)
    # pid and a random part: concurrent writers of one target (processes or threads) never share
    # a temporary file.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(target.parent)


def write_bytes(target: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    with replacing(target, durable=durable) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str, *, durable: bool = False) -> None:
    with replacing(target, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync(path: Path) -> None:
    # A read-only descriptor is enough: fsync flushes the file's (or directory's) data either way.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
