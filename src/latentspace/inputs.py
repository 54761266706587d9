"""Checks on what callers pass in, shared by local embedding, the remote client and the server.

Kept free of heavy imports (no torch, no transformers) so that the light client install can
validate texts before sending them, exactly as the server would."""

from __future__ import annotations

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
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TextEncodingError(
                    f"text {i} is not valid Unicode: {e.reason} at character {e.start} (a lone UTF-16 "
                    f"surrogate, e.g. from text cut in the middle of a character); send valid UTF-8 text"
                ) from None
    return texts


def is_remote(inference_mode: str | None, base_url: str | None) -> bool:
    """Remote when asked to, or when a server is named and no mode is given."""
    mode = inference_mode or ("remote" if base_url else "local")
    if mode not in ("local", "remote"):
        raise ValueError(f"inference_mode must be 'local' or 'remote', got {inference_mode!r}")
    return mode == "remote"
