"""Checks on what callers pass in, shared by local embedding, the remote client and the server.

Kept free of heavy imports (no torch, no transformers) so that the light client install can
validate texts before sending them, exactly as the server would."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Literal, get_args

# The prefixes a text can be embedded with (Nomic's task types); the one declaration of them.
TaskType = Literal["search_document", "search_query", "classification", "clustering"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)


class TextEncodingError(ValueError):
    """A text that is not valid Unicode (a lone surrogate): refused, naming its index."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of valid Unicode strings, or an error that names the first bad item.

    A lone surrogate ("\\udcff": legal in JSON, sent by clients that cut UTF-16 text in half) is
    refused rather than repaired: silently replacing it would embed a text the client never sent."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings (wrap a single text in a list)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings; item {i} is {type(t).__name__}")
        check_text(t, i)
    return texts


def check_text(text: str, index: int) -> None:
    """Refuse a text that is not valid Unicode, naming it as text `index` (its place in the
    caller's input, which may mix texts and images)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TextEncodingError(
                f"text {index} is not valid Unicode: {e.reason} at character {e.start} (a lone UTF-16 "
                f"surrogate, e.g. from text cut in the middle of a character); send valid UTF-8 text"
            ) from None


# -- images as data URLs -----------------------------------------------------------------------------
class DataUrlError(ValueError):
    """A data URL that does not carry base64 data; the message says what is wrong, not which input."""


def is_data_url(value: object) -> bool:
    """Whether `value` is a `data:` URL (an image inlined as text: data:image/png;base64,...)."""
    return isinstance(value, str) and value[:5].lower() == "data:"


def parse_data_url(url: str) -> bytes:
    """The bytes a base64 data URL carries (`data:<media type>;base64,<data>`).

    The media type is not checked: like every image that reaches a model here, the bytes are
    sniffed for their format when decoded, whatever the sender called them. Only base64 is
    accepted; percent-encoded data URLs are meant for text, not images."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise DataUrlError("a data URL needs a comma before its data: data:image/png;base64,<base64 data>")
    if header[5:].rsplit(";", 1)[-1].strip().lower() != "base64":
        raise DataUrlError(
            f"the data URL {header[:40]!r},... is not base64; send data:image/png;base64,<base64 data> "
            "(the image's bytes, base64-encoded)"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataUrlError(f"the data URL's data is not valid base64 ({e})") from None


def is_remote(inference_mode: str | None, base_url: str | None) -> bool:
    """Remote when asked to, or when a server is named and no mode is given."""
    mode = inference_mode or ("remote" if base_url else "local")
    if mode not in ("local", "remote"):
        raise ValueError(f"inference_mode must be 'local' or 'remote', got {inference_mode!r}")
    return mode == "remote"
