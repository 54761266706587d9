"""From a request to the items an inference worker embeds, and every check on the way.

The routes in serve/app.py read their bodies here: the image form (multipart file parts, or URLs
fetched under the server's FetchPolicy), OpenAI's `input` split into texts and images
(`openai_items`), the number of items and the dimensionality a request may ask for, and the
model's modalities. Images are decoded and preprocessed on a decode thread
(`decode_and_prepare`), their failures mapped to the status that names them (`image_error`);
`submit` hands the items to the model's worker and maps a full queue or a dead worker to 429 /
503 with Retry-After. Each check raises the ApiError the client gets.
"""

from __future__ import annotations

import asyncio
import logging

import torch
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentspace.data.images import (
    IMAGE_FORMATS,
    ImageDecodeError,
    ImageFormatError,
    ImageTooLargeError,
    decode_image,
)
from latentspace.data.url_checks import display_url
from latentspace.inputs import DataUrlError, TextEncodingError, check_text, is_data_url, parse_data_url
from latentspace.models.embedder import ModalityError
from latentspace.serve.batching import QueueFull, WorkerDead
from latentspace.serve.errors import ApiError, retry_later
from latentspace.serve.registry import Slot
from latentspace.serve.schemas import ImagePart, OpenAIRequest, TextPart
from latentspace.serve.settings import ServeSettings

log = logging.getLogger(__name__)


# -- the request body -----------------------------------------------------------------------------
async def read_image_form(request: Request, settings: ServeSettings):
    """-> (model, uploads, urls, dimensionality) from a multipart or urlencoded body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(
            415,
            f"send images as multipart/form-data ('images' file parts) or urls as "
            f"application/x-www-form-urlencoded (got {content_type or 'no Content-Type'})",
        )
    try:
        form = await request.form(
            max_files=settings.max_items, max_fields=settings.max_items + 16, max_part_size=settings.max_body_bytes
        )
    except StarletteHTTPException as e:  # the multipart parser's own limits
        too_many = "Too many" in str(e.detail)
        raise ApiError(
            413 if too_many else 400,
            f"{e.detail} (at most {settings.max_items} images per request)"
            if too_many
            else f"malformed form body: {e.detail}",
        ) from e
    images = form.getlist("images")
    not_files = [i for i, part in enumerate(images) if not isinstance(part, UploadFile)]
    if not_files:
        raise ApiError(
            400, f"images {not_files} are plain form fields; send each image as a file part (curl: -F images=@cat.png)"
        )
    urls = [u for u in form.getlist("urls") if isinstance(u, str)]
    if not images and not urls:
        raise ApiError(400, "no images: send one 'images' file part per image, or 'urls' fields")
    model = form.get("model")
    dimensionality = form.get("dimensionality")
    if dimensionality is not None:
        if not str(dimensionality).isdigit() or int(dimensionality) < 1:
            raise ApiError(422, f"dimensionality must be a positive integer, got {str(dimensionality)[:20]!r}")
        dimensionality = int(dimensionality)
    return (model if isinstance(model, str) else None), images, urls, dimensionality


async def read_form_files(request: Request, settings: ServeSettings, field: str):
    """-> (form, the file parts named `field`) from a multipart body (the collection search route)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError(
            415,
            f"send the image as multipart/form-data with an {field!r} file part "
            f"(got {content_type or 'no Content-Type'})",
        )
    try:
        form = await request.form(max_files=2, max_fields=16, max_part_size=settings.max_body_bytes)
    except StarletteHTTPException as e:
        raise ApiError(400, f"malformed form body: {e.detail}") from e
    files = [part for part in form.getlist(field) if isinstance(part, UploadFile)]
    return {k: v for k, v in form.items() if not isinstance(v, UploadFile)}, files


def openai_items(body: OpenAIRequest) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """OpenAI's `input` -> ([(index, text)], [(index, image URL)]), each item at its place in input.

    A plain string is a text unless the request says `"modality": "image"`: a string that looks
    like a URL is never fetched on a guess. Texts must be valid Unicode (422); an image must be a
    data URL or an http(s) URL (400); whether URLs may be fetched is the route's to say."""
    items = [body.input] if isinstance(body.input, str) else body.input
    texts: list[tuple[int, str]] = []
    images: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, ImagePart) or (isinstance(item, str) and body.modality == "image"):
            url = item.image_url.url if isinstance(item, ImagePart) else item
            if not (is_data_url(url) or url.lower().startswith(("http://", "https://"))):
                raise ApiError(
                    400,
                    f"input {i}: {display_url(url, 40)!r} is not an image URL; send a base64 data URL "
                    "(data:image/png;base64,...) or an http(s) URL",
                )
            images.append((i, url))
        else:
            text = item.text if isinstance(item, TextPart) else item
            try:
                check_text(text, i)
            except TextEncodingError as e:
                raise ApiError(422, str(e)) from e
            texts.append((i, text))
    return texts, images


# -- what the request asks of the model ------------------------------------------------------------
def require_modality(slot: Slot, modality: str, what: str | None = None) -> None:
    """400 unless the model embeds `modality`; `what` ("input 3 is an image") starts the message."""
    try:
        slot.model.require(modality)  # type: ignore[arg-type]
    except ModalityError as e:
        message = f"{what}, but {e}" if what else str(e)
        raise ApiError(400, f"{message}; GET /v1/models lists each model's modalities") from e


def check_items(n: int, settings: ServeSettings) -> None:
    if n > settings.max_items:
        raise ApiError(413, f"{n} items in one request; the limit is {settings.max_items}: split the request")


def check_dimensionality(dimensionality: int | None, dim: int) -> None:
    if dimensionality is not None and not 1 <= dimensionality <= dim:
        raise ApiError(422, f"dimensionality must be between 1 and {dim} for this model, got {dimensionality}")


# -- images: fetched (URLs), decoded and preprocessed -------------------------------------------------
def make_fetcher(settings: ServeSettings):
    """The server's URL fetcher, under the limits its settings give (--allow-urls only)."""
    from latentspace.data.fetch import FetchPolicy, UrlFetcher

    return UrlFetcher(
        FetchPolicy.with_limits(
            max_bytes=settings.url_max_bytes,
            timeout_s=settings.url_timeout_s,
            max_redirects=settings.url_max_redirects,
            allowed_hosts=settings.url_allowed_hosts,
        )
    )


async def fetch_all(fetcher, urls: list[str], labels: list[str]) -> list[tuple[str, bytes]]:
    """[(the name messages give it, its bytes)] of each URL, fetched concurrently; `labels` name
    them in messages ("url 2", "input 5"); the first URL refused or failed is the 400 answered."""
    from latentspace.data.fetch import UrlRefused

    results = await asyncio.gather(
        *(fetcher.fetch(u, label=label) for u, label in zip(urls, labels, strict=True)), return_exceptions=True
    )
    out = []
    for url, label, result in zip(urls, labels, results, strict=True):
        shown = f"{label} ({display_url(url)})"  # credentials and query strings are never echoed
        if isinstance(result, UrlRefused):
            raise ApiError(400, str(result))
        if isinstance(result, BaseException):
            log.error("fetching %s failed", shown, exc_info=result)
            raise ApiError(400, f"{shown}: could not be fetched ({type(result).__name__})")
        out.append((shown, result))
    return out


def decode_and_prepare(data: bytes | str, name: str, max_pixels: int, prepare) -> torch.Tensor:
    """On a decode thread: bytes, or a data URL carrying them -> checked, decoded, preprocessed
    tensor. (A data URL's base64 is decoded here too, off the event loop: it can be megabytes.)"""
    if isinstance(data, str):
        try:
            data = parse_data_url(data)
        except DataUrlError as e:
            raise ImageDecodeError(f"{name}: {e}") from None
    return prepare(decode_image(data, name=name, max_pixels=max_pixels, formats=IMAGE_FORMATS))


def image_error(error: BaseException) -> ApiError:
    """The answer for an image that could not be decoded or preprocessed."""
    if isinstance(error, ImageFormatError):
        return ApiError(415, str(error))
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, str(error))
    if isinstance(error, ImageDecodeError):
        return ApiError(400, f"{error}; the other images in this request were not embedded")
    log.error("image preprocessing failed", exc_info=error)
    return ApiError(500, f"image preprocessing failed: {type(error).__name__}")


# -- the inference worker -------------------------------------------------------------------------
async def submit(slot: Slot, kind, items, costs, settings: ServeSettings) -> torch.Tensor:
    """The rows the model's worker returns for `items`, or the ApiError for a full queue (429) or
    a worker that is not running (503), both with Retry-After."""
    try:
        return await slot.worker.submit(kind, items, costs)
    except QueueFull as e:
        raise retry_later(429, str(e), settings.retry_after_s) from e
    except WorkerDead as e:
        raise retry_later(503, f"{e}; the server needs a restart", settings.retry_after_s) from e
    except RuntimeError as e:
        raise ApiError(500, str(e)) from e
