"""The HTTP API, compatible with Nomic's hosted embedding API (see docs/design.md).

    POST /v1/embedding/text    JSON {texts, model, task_type, dimensionality, long_text_mode}
    POST /v1/embedding/image   multipart: model + one `images` file part per image, or `urls`
                               fields; or urlencoded model + repeated urls
    POST /v1/embeddings        OpenAI-style {input, model, dimensions, encoding_format}
    GET  /v1/models, /health, /metrics
    GET  /v1/user                  what Nomic's client checks its key against

Every body and status is typed in serve/schemas.py, so /openapi.json (and /docs) documents them.

Every handler does the same three things: find a ready model (404 / 503 otherwise), turn the
request into items (texts with token counts, or preprocessed image tensors, decoded on a thread
pool so the event loop never decodes), and await the model's inference worker, which batches
them with other requests.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import torch
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentspace.data.images import (
    IMAGE_FORMATS,
    ImageDecodeError,
    ImageFormatError,
    ImageTooLargeError,
    decode_image,
)
from latentspace.models.embedder import ModalityError, finish
from latentspace.serve.auth import BearerAuth
from latentspace.serve.batching import QueueFull, WorkerDead
from latentspace.serve.collections import CollectionSet, add_collection_routes, query_vector
from latentspace.serve.errors import ApiError, retry_later
from latentspace.serve.metrics import ServerMetrics
from latentspace.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from latentspace.serve.registry import Loader, ModelRegistry, Slot
from latentspace.serve.schemas import (
    IMAGE_FORM,
    IMAGE_URL_FORM,
    EmbeddingResponse,
    ErrorResponse,
    HealthResponse,
    ModelList,
    OpenAIEmbeddingResponse,
    OpenAIRequest,
    TextRequest,
    UserResponse,
    error_responses,
)
from latentspace.serve.settings import ServeSettings

log = logging.getLogger(__name__)

# Requests with fewer characters than this are tokenised on the event loop (see embed_texts).
INLINE_TOKENIZE_CHARS = 4096


def create_app(settings: ServeSettings, *, loader: Loader | None = None) -> FastAPI:
    metrics = ServerMetrics()
    registry = ModelRegistry(settings, metrics, loader)
    collections = CollectionSet(settings)
    registry.after_load.append(collections.open_all)
    auth = BearerAuth(settings.api_keys)
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    # Large text requests are tokenised here, off the event loop; two threads are plenty (a
    # tokenizer call releases the GIL) and bound the per-thread tokenizer copies.
    text_pool = ThreadPoolExecutor(2, thread_name_prefix="tokenize")
    fetcher = _make_fetcher(settings) if settings.allow_urls else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.workers > 1:
            # Worker processes share one listening socket, and uvicorn only accepts on it once
            # startup ends: loading here keeps a loading worker from taking requests (and answering
            # 503) while its siblings are ready. A single process loads in the background instead,
            # so its /health can say "loading" to a readiness probe.
            await asyncio.to_thread(registry.load_now)
        else:
            registry.start()
        yield
        registry.stop()
        metrics.process_exiting()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        text_pool.shutdown(wait=False, cancel_futures=True)
        if fetcher is not None:
            await fetcher.aclose()

    app = FastAPI(title="latentspace", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.registry, app.state.metrics, app.state.settings = registry, metrics, settings
    _install_error_handlers(app)

    if auth.enabled:
        # HTTPBearer only documents the scheme in /openapi.json (auto_error=False: it never answers
        # itself); BearerAuth checks the key, in constant time and with this API's error body.
        bearer = HTTPBearer(auto_error=False, description="one of the server's API keys")

        def require_key(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
            auth.check(request.headers.get("authorization"))
    else:

        def require_key() -> None:
            pass

    def errors(*statuses: int) -> dict:
        """The error statuses a route can answer with: `statuses`, and 401 where keys are required."""
        return error_responses(*sorted({*statuses, *((401,) if auth.enabled else ())}))

    # -- text -------------------------------------------------------------------------------------
    async def embed_texts(
        slot: Slot, texts: list[str], task_type: str, dimensionality: int | None, long_text_mode: str = "truncate"
    ) -> tuple[torch.Tensor, int]:
        model = slot.model
        _require(slot, "text")
        _check_items(len(texts), settings)
        _check_dimensionality(dimensionality, model.dim)
        prepare = partial(model.prepare_texts, texts, task_type, long_text_mode)
        try:  # tokenised once, here; the inference thread only runs the forward on the ids
            if long_text_mode == "truncate" and sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                prepared = prepare()  # ~0.1 ms: cheaper than a hop to a thread and back
            else:
                prepared = await asyncio.get_running_loop().run_in_executor(text_pool, prepare)
        except (ValueError, TypeError) as e:
            raise ApiError(422, str(e)) from e
        costs = [len(ids) for ids in prepared.ids]
        rows = await _submit(slot, registry.text_kind(slot), prepared.ids, costs, settings)
        return finish(prepared.combine(rows), dimensionality), prepared.token_count

    # The embedding routes return orjson Responses, sent as they are: response_model= documents
    # the body without FastAPI re-validating every float.
    @app.post(
        "/v1/embedding/text",
        dependencies=[Depends(require_key)],
        response_model=EmbeddingResponse,
        responses=errors(400, 404, 413, 422, 429, 503),
        summary="Embed texts (Nomic's API)",
    )
    async def text_endpoint(body: TextRequest) -> Response:
        slot = registry.get(body.model)
        vectors, tokens = await embed_texts(slot, body.texts, body.task_type, body.dimensionality, body.long_text_mode)
        return _nomic_response(vectors, slot, tokens, "text")

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(require_key)],
        response_model=OpenAIEmbeddingResponse,
        responses=errors(400, 404, 413, 422, 429, 503),
        summary="Embed texts (OpenAI's API)",
    )
    async def openai_endpoint(body: OpenAIRequest) -> Response:
        slot = registry.get(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(422, "input is empty: give a string or a non-empty list of strings")
        vectors, tokens = await embed_texts(slot, texts, body.task_type, body.dimensions)
        rows = vectors.numpy()
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(row, body.encoding_format)}
            for i, row in enumerate(rows)
        ]
        return _json(
            {
                "object": "list",
                "data": data,
                "model": slot.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "space": slot.model.space,
                "runtime": slot.model.runtime_names()["text"],
            }
        )

    # -- images -----------------------------------------------------------------------------------
    @app.post(
        "/v1/embedding/image",
        dependencies=[Depends(require_key)],
        response_model=EmbeddingResponse,
        responses=errors(400, 404, 413, 415, 422, 429, 503),
        summary="Embed images (Nomic's API)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": IMAGE_FORM},
                    "application/x-www-form-urlencoded": {"schema": IMAGE_URL_FORM},
                },
            }
        },
    )
    async def image_endpoint(request: Request) -> Response:
        model_name, uploads, urls, dimensionality = await _read_image_form(request, settings)
        slot = registry.get(model_name)
        _require(slot, "image")
        _check_items(len(uploads) + len(urls), settings)
        _check_dimensionality(dimensionality, slot.model.dim)
        if urls and fetcher is None:
            raise ApiError(
                400,
                "remote image URLs are disabled on this server: upload the images as "
                "'images' file parts, or start the server with --allow-urls",
            )
        named = [(f"image {i} ({u.filename or 'unnamed'})", await u.read()) for i, u in enumerate(uploads)]
        named += await _fetch_all(fetcher, urls, start=len(uploads)) if urls else []
        loop = asyncio.get_running_loop()
        prepare = slot.model.preprocess_image
        jobs = [
            loop.run_in_executor(decode_pool, _decode_and_prepare, data, name, settings.max_pixels, prepare)
            for name, data in named
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:  # the first bad image, by position, names the failure
            if isinstance(result, BaseException):
                raise _image_error(result)
        rows = await _submit(slot, registry.image_kind(slot), results, None, settings)
        return _nomic_response(finish(rows, dimensionality), slot, 0, "image")

    # -- discovery and operations -----------------------------------------------------------------
    # exclude_unset: an entry has the fields its model describes, no nulls for the rest
    @app.get(
        "/v1/models",
        dependencies=[Depends(require_key)],
        response_model=ModelList,
        response_model_exclude_unset=True,
        responses=errors(),
        summary="The served models",
    )
    async def models_endpoint() -> dict[str, Any]:
        statuses = registry.statuses()
        data = []
        for name, slot in registry.slots.items():
            entry = slot.served.describe() if slot.served else {"id": name, "object": "model", "kind": None}
            data.append({**entry, **statuses[name]})
        return {"object": "list", "data": data}

    # -- collections: search by text, image or item, thumbnails (serve/collections.py) --------------
    async def embed_query_text(slot: Slot, text: str):
        vectors, _ = await embed_texts(slot, [text], "search_query", None)
        return vectors[0].numpy()

    async def embed_query_image(slot: Slot, data: bytes, name: str):
        _require(slot, "image")
        loop = asyncio.get_running_loop()
        try:
            pixels = await loop.run_in_executor(
                decode_pool, _decode_and_prepare, data, name, settings.max_pixels, slot.model.preprocess_image
            )
        except Exception as e:  # noqa: BLE001 - mapped to 400 / 413 / 415 like the embedding route
            raise _image_error(e) from e
        return query_vector(await _submit(slot, registry.image_kind(slot), [pixels], None, settings))

    add_collection_routes(
        app,
        collections=collections,
        registry=registry,
        settings=settings,
        require_key=require_key,
        errors=errors,
        decode_pool=decode_pool,
        embed_query_text=embed_query_text,
        embed_query_image=embed_query_image,
        read_image_form=lambda request, field: _read_form_files(request, settings, field),
    )

    @app.get(
        "/v1/user",
        dependencies=[Depends(require_key)],
        response_model=UserResponse,
        responses=errors(),
        summary="The key's user (for Nomic's client)",
    )
    async def user_endpoint() -> dict[str, Any]:
        # Nomic's Python client GETs this when it connects (to check the key) and logs a warning
        # about an invalid token unless it answers 200; nothing else reads it.
        return {"id": "latentspace", "organizations": [], "default_organization": None}

    @app.get(
        "/health",
        response_model=HealthResponse,
        summary="Readiness: 200 when all is ready",
        responses={
            503: {
                "model": HealthResponse,
                "description": "a model or collection is loading or failed",
                "headers": {"Retry-After": {"schema": {"type": "string"}}},
            }
        },
    )
    async def health() -> JSONResponse:
        statuses = registry.statuses()
        body = {"models": statuses}
        if collections.items:
            body["collections"] = {name: c.status for name, c in collections.items.items()}
        if registry.healthy and collections.healthy:
            return JSONResponse({"status": "ok", **body})
        return JSONResponse(
            {"status": "unavailable", **body}, status_code=503, headers={"Retry-After": str(settings.retry_after_s)}
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text exposition format)")
    async def metrics_endpoint() -> Response:
        registry.statuses()  # refresh the worker-up gauges
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    _mount_page(app)  # the search page at / and its files at /static (web/); it calls the routes above

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)  # outermost: runs first
    return app


# -- helpers ---------------------------------------------------------------------------------------
def _make_fetcher(settings: ServeSettings):
    from latentspace.data.fetch import FetchPolicy, UrlFetcher

    return UrlFetcher(
        FetchPolicy.with_limits(
            max_bytes=settings.url_max_bytes,
            timeout_s=settings.url_timeout_s,
            max_redirects=settings.url_max_redirects,
            allowed_hosts=settings.url_allowed_hosts,
        )
    )


async def _fetch_all(fetcher, urls: list[str], start: int) -> list[tuple[str, bytes]]:
    from latentspace.data.fetch import UrlRefused, display_url

    labels = [f"url {i}" for i in range(start, start + len(urls))]
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


def _decode_and_prepare(data: bytes, name: str, max_pixels: int, prepare) -> torch.Tensor:
    """On a decode thread: bytes -> checked, decoded, preprocessed tensor."""
    return prepare(decode_image(data, name=name, max_pixels=max_pixels, formats=IMAGE_FORMATS))


def _image_error(error: BaseException) -> ApiError:
    if isinstance(error, ImageFormatError):
        return ApiError(415, str(error))
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, str(error))
    if isinstance(error, ImageDecodeError):
        return ApiError(400, f"{error}; the other images in this request were not embedded")
    log.error("image preprocessing failed", exc_info=error)
    return ApiError(500, f"image preprocessing failed: {type(error).__name__}")


async def _read_form_files(request: Request, settings: ServeSettings, field: str):
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


async def _read_image_form(request: Request, settings: ServeSettings):
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


def _require(slot: Slot, modality: str) -> None:
    try:
        slot.model.require(modality)  # type: ignore[arg-type]
    except ModalityError as e:
        raise ApiError(400, f"{e}; GET /v1/models lists each model's modalities") from e


def _check_items(n: int, settings: ServeSettings) -> None:
    if n > settings.max_items:
        raise ApiError(413, f"{n} items in one request; the limit is {settings.max_items}: split the request")


def _check_dimensionality(dimensionality: int | None, dim: int) -> None:
    if dimensionality is not None and not 1 <= dimensionality <= dim:
        raise ApiError(422, f"dimensionality must be between 1 and {dim} for this model, got {dimensionality}")


async def _submit(slot: Slot, kind, items, costs, settings: ServeSettings) -> torch.Tensor:
    try:
        return await slot.worker.submit(kind, items, costs)
    except QueueFull as e:
        raise retry_later(429, str(e), settings.retry_after_s) from e
    except WorkerDead as e:
        raise retry_later(503, f"{e}; the server needs a restart", settings.retry_after_s) from e
    except RuntimeError as e:
        raise ApiError(500, str(e)) from e


def _json(payload: dict[str, Any]) -> Response:
    """orjson writes float32 arrays directly (shortest round-trip spelling of each float32), several
    times faster than encoding Python floats one by one."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def _nomic_response(vectors: torch.Tensor, slot: Slot, tokens: int, modality: str) -> Response:
    # `space` and `runtime` are beyond Nomic's shape (clients ignore them): every answer says which
    # space its vectors are in, and which runtime made them.
    return _json(
        {
            "embeddings": vectors.numpy(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "model": slot.name,
            "space": slot.model.space,
            "runtime": slot.model.runtime_names()[modality],
        }
    )


def _encode_vector(row, encoding_format: str):
    if encoding_format == "base64":  # OpenAI's format: little-endian float32 bytes, base64
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error has one body, the documented ErrorResponse, whatever raised it."""
    return JSONResponse(ErrorResponse(detail=detail).model_dump(), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for e in error.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {e.get('msg')}")
        return _error(422, "invalid request: " + "; ".join(problems[:10]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its traceback, answered in the documented error shape
        # so clients parse one format whatever happens.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal error; the server log has the details")


# -- the search page (src/latentspace/web): GET / and /static/... ----------------------------------
# Static files only, public like /health (the page holds no data; it asks the user for the API key
# and sends it to the /v1 routes). The CSP lets the page load only its own files, so a caption that
# slipped into HTML still could not run a script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _mount_page(app: FastAPI) -> None:
    from pathlib import Path

    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    web = Path(__file__).resolve().parent.parent / "web"
    app.mount("/static", StaticFiles(directory=web), name="static")

    @app.get("/", include_in_schema=False)
    async def search_page() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
