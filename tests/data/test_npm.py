"""Fetching pinned npm packages: cache, integrity, npm failures (a fake `npm` on PATH, no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from latentspace.data import npm
from latentspace.data.npm import (
    IntegrityError,
    NpmPackageError,
    fetch_npm_package,
    local_or_fetched,
    open_package,
    verify_integrity,
)

SPEC = "some-data-package@1.2.3"
TARBALL = "some-data-package-1.2.3.tgz"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


@pytest.fixture
def package(tmp_path) -> Path:
    path = tmp_path / "upstream" / TARBALL
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("package/data.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _fake_npm(tmp_path: Path, monkeypatch, script: str) -> None:
    """Put a shell-script `npm` first on PATH. `npm pack SPEC --json --pack-destination DIR`:
    DIR is the fifth argument."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "npm"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_verify_integrity_accepts_right_hash_and_rejects_wrong(package, tmp_path):
    verify_integrity(package, _integrity(package))
    other = tmp_path / "other.tgz"
    other.write_bytes(b"something else")
    with pytest.raises(IntegrityError, match="integrity mismatch"):
        verify_integrity(package, _integrity(other))
    with pytest.raises(ValueError, match="unsupported integrity"):
        verify_integrity(package, "nohash")


def test_tarball_name_matches_npm_pack():
    assert npm.tarball_name(SPEC) == TARBALL


def test_verified_cache_is_used_without_npm(tmp_path, package, monkeypatch):
    cached = tmp_path / TARBALL
    cached.write_bytes(package.read_bytes())
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    assert fetch_npm_package(SPEC, _integrity(package), tmp_path) == cached


def test_without_npm_the_error_says_what_to_do(tmp_path, package, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    corrupt = tmp_path / TARBALL
    corrupt.write_bytes(b"not a tarball")
    with pytest.raises(NpmPackageError, match="npm was not found.*local tarball"):
        fetch_npm_package(SPEC, _integrity(package), tmp_path)
    assert not corrupt.exists()  # the corrupt cached copy was dropped


def test_a_corrupt_cache_is_fetched_again(tmp_path, package, monkeypatch):
    _fake_npm(tmp_path, monkeypatch, f'cp "{package}" "$5/{TARBALL}"\n')
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / TARBALL).write_bytes(b"truncated")
    path = fetch_npm_package(SPEC, _integrity(package), cache)
    verify_integrity(path, _integrity(package))
    assert sorted(p.name for p in cache.iterdir()) == [TARBALL]


def test_a_mismatching_download_is_refused_and_not_kept(tmp_path, package, monkeypatch):
    _fake_npm(tmp_path, monkeypatch, f'echo garbage > "$5/{TARBALL}"\n')
    cache = tmp_path / "cache"
    with pytest.raises(IntegrityError, match="different hash than the pinned one"):
        fetch_npm_package(SPEC, _integrity(package), cache)
    assert list(cache.iterdir()) == []


def test_npm_failure_is_reported_with_its_output(tmp_path, package, monkeypatch):
    _fake_npm(tmp_path, monkeypatch, 'echo "npm error code E404" >&2\nexit 1\n')
    with pytest.raises(NpmPackageError, match="E404"):
        fetch_npm_package(SPEC, _integrity(package), tmp_path / "cache")


def test_a_relative_cache_dir_works(tmp_path, package, monkeypatch):
    # npm runs inside the destination folder, so a relative --pack-destination would point at
    # cache/.tmp/cache/.tmp; the fetcher must hand npm an absolute path.
    _fake_npm(tmp_path, monkeypatch, f'cp "{package}" "$5/{TARBALL}"\n')
    monkeypatch.chdir(tmp_path)
    path = fetch_npm_package(SPEC, _integrity(package), Path("relative-cache"))
    verify_integrity(path, _integrity(package))


def test_a_local_tarball_is_verified_instead_of_fetched(tmp_path, package, monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda name: None)
    assert local_or_fetched(SPEC, _integrity(package), package, tmp_path / "cache") == package
    wrong = tmp_path / "wrong.tgz"
    wrong.write_bytes(b"x")
    with pytest.raises(IntegrityError):
        local_or_fetched(SPEC, _integrity(package), wrong, tmp_path / "cache")


def test_a_truncated_tarball_fails_clearly_when_read(tmp_path, package):
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(package.read_bytes()[:40])
    with pytest.raises(NpmPackageError, match="truncated or corrupt"), open_package(truncated) as tar:
        for member in tar:
            tar.extractfile(member).read()
