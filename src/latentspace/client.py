"""The remote side of `embed.text` / `embed.image` / `embed.mixed`: talks to a `latentspace serve`
server (or any server speaking Nomic's embedding API; `mixed` needs /v1/embeddings with images).

Large inputs are cut into chunks, sent concurrently on a few threads, and reassembled in input
order. Each chunk is retried on 429, 5xx and connection errors with exponential backoff, waiting
at least as long as the server's Retry-After says. Anything else (400, 401, 404, 413, 415, 422)
is the caller's to fix and raises `RemoteError` with the server's message at once.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from latentspace.data.images import to_rgb
from latentspace.inputs import DataUrlError, is_data_url, parse_data_url

BASE_URL_ENV = "LATENTSPACE_BASE_URL"
API_KEY_ENV = "LATENTSPACE_API_KEY"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class SearchResults(list):
    """A collection search's results, best first (a list of dicts, as ever), with `matches`: how
    many reach the search's min_relevance. With `matches` 0 the list holds the nearest results
    all the same, each with "match" False: nothing in the collection looks like the query."""

    def __init__(self, results: Iterable[dict[str, Any]] = (), matches: int | None = None) -> None:
        super().__init__(results)
        self.matches = len(self) if matches is None else matches

    @classmethod
    def of(cls, answer: dict[str, Any]) -> SearchResults:
        """From a search response (a server without relevance sends no `matches`: all match)."""
        return cls(answer["results"], answer.get("matches"))


class RemoteError(RuntimeError):
    """The server refused a request (or kept failing after every retry)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_s: float = 0.5  # first wait; doubles each retry
    max_backoff_s: float = 30.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
        return max(backoff, retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body.get("error") or body)
    except ValueError:
        return response.text[:500] or response.reason_phrase


class RemoteClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        concurrency: int = 4,
        text_chunk: int = 64,
        image_chunk: int = 16,
        retry: RetryPolicy = RetryPolicy(),
    ):
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise ValueError(f"remote mode needs a server: pass base_url='http://host:8000' or set {BASE_URL_ENV}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.concurrency, self.text_chunk, self.image_chunk, self.retry = concurrency, text_chunk, image_chunk, retry
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))
        )

    def close(self) -> None:
        self._http.close()

    # -- public ----------------------------------------------------------------------------------
    def text(
        self,
        texts: Sequence[str],
        *,
        model: str | None,
        task_type: str,
        dimensionality: int | None,
        long_text_mode: str = "truncate",
    ) -> dict[str, Any]:
        def send(chunk: list[str]) -> dict:
            body: dict[str, Any] = {
                "texts": chunk,
                "model": model,
                "task_type": task_type,
                "long_text_mode": long_text_mode,
            }
            if dimensionality is not None:
                body["dimensionality"] = dimensionality
            return self._post("/v1/embedding/text", json=body)

        chunks = [list(texts[i : i + self.text_chunk]) for i in range(0, len(texts), self.text_chunk)]
        return self._gather(chunks, send, model)

    def image(self, images: Sequence[Any], *, model: str | None, dimensionality: int | None) -> dict[str, Any]:
        parts = [_as_part(i, img) for i, img in enumerate(images)]  # read everything first: fail fast

        def send(chunk: list[tuple[str, Any]]) -> dict:
            data: dict[str, Any] = {
                k: v for k, v in (("model", model), ("dimensionality", dimensionality)) if v is not None
            }
            if chunk[0][0] == "urls":
                return self._post("/v1/embedding/image", data={**data, "urls": [u for _, u in chunk]})
            return self._post("/v1/embedding/image", data=data, files=[("images", f) for _, f in chunk])

        # One request holds only uploads or only URLs (the server answers uploads first), so the
        # order of the answer is the order of the input.
        chunks: list[list] = []
        for part in parts:
            if chunks and chunks[-1][0][0] == part[0] and len(chunks[-1]) < self.image_chunk:
                chunks[-1].append(part)
            else:
                chunks.append([part])
        return self._gather(chunks, send, model)

    def mixed(
        self,
        items: Sequence[tuple[str, Any]],
        *,
        model: str | None,
        task_type: str,
        dimensionality: int | None,
    ) -> dict[str, Any]:
        """Texts and images in one list, [("text", str) or ("image", path, bytes, PIL image, data URL
        or http(s) URL)], embedded by POST /v1/embeddings; the vectors come back in input order."""
        parts = [_as_input_part(i, kind, value) for i, (kind, value) in enumerate(items)]  # fail fast

        def send(chunk: list[dict]) -> dict:
            body: dict[str, Any] = {"input": chunk, "model": model, "task_type": task_type, "encoding_format": "base64"}
            if dimensionality is not None:
                body["dimensions"] = dimensionality
            answer = self._post("/v1/embeddings", json=body)
            # OpenAI's shape -> Nomic's, which the rest of the client (and embed's callers) speak;
            # base64 carries the float32 vectors exactly
            rows = sorted(answer["data"], key=lambda d: d["index"])
            return {
                **answer,
                "embeddings": [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in rows],
            }

        # A chunk holds at most text_chunk items and image_chunk images (images are the large ones).
        chunks: list[list[dict]] = []
        images_in_last = 0
        for part in parts:
            is_image = part["type"] == "image_url"
            if not chunks or len(chunks[-1]) >= self.text_chunk or (is_image and images_in_last >= self.image_chunk):
                chunks.append([])
                images_in_last = 0
            chunks[-1].append(part)
            images_in_last += is_image
        return self._gather(chunks, send, model)

    def search_collection(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: Any = None,
        like: str | None = None,
        terms: list[dict[str, Any]] | None = None,
        k: int = 10,
        min_score: float | None = None,
        path_prefix: str | None = None,
        caption_contains: str | None = None,
        min_relevance: float | None = None,
    ) -> SearchResults:
        """Results of POST /v1/collections/NAME/search (or /search/image), best first, with the
        answer's `matches`. `terms`: weighted texts and items ({"text": ...} / {"like": ID},
        optional "weight") and at most one image ({"image": path, bytes or PIL image}), which goes
        as the uploaded image."""
        fields = {
            key: value
            for key, value in (
                ("k", k),
                ("min_score", min_score),
                ("min_relevance", min_relevance),
                ("path_prefix", path_prefix),
                ("caption_contains", caption_contains),
            )
            if value is not None
        }
        path = f"/v1/collections/{collection}/search"
        if terms is not None:
            images = [term for term in terms if "image" in term]
            if len(images) > 1:
                raise ValueError("a server search takes at most one image term (the uploaded image)")
            others = [term for term in terms if "image" not in term]
            if images:
                image = images[0]["image"]
                fields["image_weight"] = float(images[0].get("weight", 1.0))
                if others:
                    fields["terms"] = json.dumps(others)
            else:
                return SearchResults.of(self._post(path, json={**fields, "terms": others}))
        if image is not None:
            kind, part = _as_part(0, image)
            if kind == "urls":
                raise ValueError("search a collection with an uploaded image (a path, bytes or PIL image), not a URL")
            answer = self._post(
                path + "/image", data={key: str(value) for key, value in fields.items()}, files=[("image", part)]
            )
        else:
            answer = self._post(path, json={**fields, **({"text": text} if like is None else {"like": like})})
        return SearchResults.of(answer)

    # -- plumbing --------------------------------------------------------------------------------
    def _gather(self, chunks: list, send, model: str | None) -> dict[str, Any]:
        if not chunks:
            return {"embeddings": [], "usage": _add_usage([]), "model": model, "space": None, "runtime": None}
        with ThreadPoolExecutor(min(self.concurrency, len(chunks))) as pool:
            answers = list(pool.map(lambda chunk: _send_fitting(send, chunk), chunks))  # map keeps input order
        spaces = {a.get("space") for a in answers}
        if len(spaces) > 1:  # e.g. a load balancer over servers with different models
            raise RemoteError(
                f"the server answered from different latent spaces {sorted(map(str, spaces))}; "
                "these embeddings would not be comparable"
            )
        # Batches may meet servers on different runtimes (workers behind a balancer, a fall-back):
        # all of them are named.
        runtimes = sorted({str(a["runtime"]) for a in answers if a.get("runtime")})
        return {
            "embeddings": [row for a in answers for row in a["embeddings"]],
            "usage": _add_usage(answers),
            "model": answers[0].get("model", model),
            "space": spaces.pop(),
            "runtime": ", ".join(runtimes) or None,
        }

    def _post(self, path: str, **kwargs) -> dict:
        last = ""
        for attempt in range(self.retry.max_retries + 1):
            retry_after = None
            try:
                response = self._http.post(path, **kwargs)
            except httpx.TransportError as e:  # refused, reset, timed out: worth another try
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 400:
                    return response.json()
                last = f"HTTP {response.status_code}: {_detail(response)}"
                if response.status_code not in RETRY_STATUSES:
                    raise RemoteError(f"{self.base_url}{path} refused the request: {last}", response.status_code)
                retry_after = _retry_after(response)
            if attempt < self.retry.max_retries:
                time.sleep(self.retry.wait(attempt, retry_after))
        raise RemoteError(
            f"{self.base_url}{path} failed after {self.retry.max_retries + 1} attempts; last error: {last}"
        )


def _send_fitting(send, chunk: list) -> dict:
    """Send a chunk; if the server says it is too large (413, e.g. a lower items-per-request
    limit than our chunk size), send it in halves and join the answers."""
    try:
        return send(chunk)
    except RemoteError as e:
        if e.status != 413 or len(chunk) < 2:
            raise
    half = len(chunk) // 2
    first, second = _send_fitting(send, chunk[:half]), _send_fitting(send, chunk[half:])
    return {**first, "embeddings": first["embeddings"] + second["embeddings"], "usage": _add_usage([first, second])}


def _add_usage(answers: list[dict]) -> dict[str, int]:
    """The usage of several answers together: tokens, and images where the answers count them."""
    tokens = sum(a.get("usage", {}).get("prompt_tokens", 0) for a in answers)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    if any("images" in a.get("usage", {}) for a in answers):
        usage["images"] = sum(a["usage"].get("images", 0) for a in answers)
    return usage


def _as_part(index: int, image: Any) -> tuple[str, Any]:
    """One input image -> ("urls", url) or ("images", (filename, bytes, content type)); a data URL
    is sent as the bytes it carries."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return "urls", image
    if is_data_url(image):
        try:
            return "images", (f"image{index}", parse_data_url(image), "application/octet-stream")
        except DataUrlError as e:
            raise ValueError(f"image {index}: {e}") from None
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        to_rgb(image).save(buffer, format="PNG")  # lossless, and the same RGB local mode would see
        return "images", (f"image{index}.png", buffer.getvalue(), "image/png")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "images", (f"image{index}", bytes(image), "application/octet-stream")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return "images", (path.name, path.read_bytes(), "application/octet-stream")
    raise TypeError(f"image {index}: unsupported input {type(image).__name__}; give a path, URL, bytes or a PIL image")


def _as_input_part(index: int, kind: str, value: Any) -> dict:
    """One item of embed.mixed -> a typed part of /v1/embeddings' input. Local images travel as
    base64 data URLs (the server sniffs their format, so the media type is only a label); http(s)
    URLs are fetched by the server."""
    if kind == "text":
        return {"type": "text", "text": value}
    if is_data_url(value):
        try:
            parse_data_url(value)  # refused here, where the index is the caller's (chunks renumber it)
        except DataUrlError as e:
            raise ValueError(f"input {index}: {e}") from None
        return {"type": "image_url", "image_url": {"url": value}}
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return {"type": "image_url", "image_url": {"url": value}}
    _, (_, data, content_type) = _as_part(index, value)
    media_type = "image/png" if content_type == "image/png" else "application/octet-stream"
    return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{base64.b64encode(data).decode()}"}}


_clients: dict[tuple, RemoteClient] = {}
_clients_lock = threading.Lock()


def client_for(base_url: str | None, api_key: str | None, timeout: float) -> RemoteClient:
    """A shared client per (server, key, timeout), so connections are reused across calls."""
    key = (
        base_url or os.environ.get(BASE_URL_ENV),
        api_key if api_key is not None else os.environ.get(API_KEY_ENV),
        timeout,
    )
    with _clients_lock:
        if key not in _clients:
            _clients[key] = RemoteClient(key[0], key[1], timeout=timeout)
        return _clients[key]
