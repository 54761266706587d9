"""The HTTP API, compatible with Nomic's hosted embedding API (see docs/design.md).

    POST /v1/embedding/text    JSON {texts, model, task_type, dimensionality, long_text_mode}
    POST /v1/embedding/image   multipart: model + one `images` file part per image, or `urls`
                               fields; or urlencoded model + repeated urls
    POST /v1/embeddings        OpenAI-style {input, model, dimensions, encoding_format}
    GET  /v1/models, /health, /metrics
    GET  /v1/user                  what Nomic's client checks its key against

Every body and status is typed in serve/schemas.py, so /openapi.json (and /docs) documents them.

Every handler does the same three things: find a ready model (404 / 503 otherwise; the models
and their workers are serve/registry.py's), turn the request into items (texts with token counts,
or preprocessed image tensors, decoded on a thread pool so the event loop never decodes: the
checks and conversions are serve/request_items.py's), and await the model's inference worker,
which batches them with other requests. The bodies it answers with, errors included, are written
by serve/responses.py.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from latentspace.inputs import is_data_url
from latentspace.models.embedder import finish
from latentspace.serve.auth import BearerAuth
from latentspace.serve.collections import CollectionSet, add_collection_routes, query_vector
from latentspace.serve.duplicates import add_duplicate_routes
from latentspace.serve.errors import ApiError
from latentspace.serve.metrics import ServerMetrics
from latentspace.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from latentspace.serve.registry import Loader, ModelRegistry, Slot
from latentspace.serve.request_items import (
    check_dimensionality,
    check_items,
    decode_and_prepare,
    fetch_all,
    image_error,
    make_fetcher,
    openai_items,
    read_form_files,
    read_image_form,
    require_modality,
    submit,
)
from latentspace.serve.responses import encode_vector, install_error_handlers, json_response, nomic_response
from latentspace.serve.schemas import (
    IMAGE_FORM,
    IMAGE_URL_FORM,
    EmbeddingResponse,
    HealthResponse,
    ModelList,
    OpenAIEmbeddingResponse,
    OpenAIRequest,
    TextRequest,
    UserResponse,
    error_responses,
)
from latentspace.serve.settings import ServeSettings

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
    fetcher = make_fetcher(settings) if settings.allow_urls else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.workers > 1:
            # Worker processes share one listening socket, and uvicorn only accepts on it once
            # startup ends: loading here keeps a loading worker from taking requests (and answering
            # 503) while its siblings are ready. A single process loads in the background instead,
            # so its /health can say "loading" to a readiness probe.
            await asyncio.to_thread(registry.load_now)
            registry.check_references_in_background()  # not part of start-up: see check_references
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
    install_error_handlers(app)

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
        require_modality(slot, "text")
        check_items(len(texts), settings)
        check_dimensionality(dimensionality, model.dim)
        prepare = partial(model.prepare_texts, texts, task_type, long_text_mode)
        try:  # tokenised once, here; the inference thread only runs the forward on the ids
            if long_text_mode == "truncate" and sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
                prepared = prepare()  # ~0.1 ms: cheaper than a hop to a thread and back
            else:
                prepared = await asyncio.get_running_loop().run_in_executor(text_pool, prepare)
        except (ValueError, TypeError) as e:
            raise ApiError(422, str(e)) from e
        costs = [len(ids) for ids in prepared.ids]
        rows = await submit(slot, registry.text_kind(slot), prepared.ids, costs, settings)
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
        return nomic_response(vectors, slot, tokens, "text")

    @app.post(
        "/v1/embeddings",
        dependencies=[Depends(require_key)],
        response_model=OpenAIEmbeddingResponse,
        responses=errors(400, 404, 413, 415, 422, 429, 503),
        summary="Embed texts and images (OpenAI's API)",
    )
    async def openai_endpoint(body: OpenAIRequest) -> Response:
        slot = registry.get(body.model)
        texts, images = openai_items(body)  # [(index in input, text)], [(index in input, image URL)]
        check_items(len(texts) + len(images), settings)
        check_dimensionality(body.dimensions, slot.model.dim)
        if texts:
            require_modality(slot, "text", f"input {texts[0][0]} is a text")
        if images:
            require_modality(slot, "image", f"input {images[0][0]} is an image")
        remote = [(i, url) for i, url in images if not is_data_url(url)]
        if remote and fetcher is None:
            raise ApiError(
                400,
                f"input {remote[0][0]}: remote image URLs are disabled on this server: send the image as a "
                "data URL (data:image/png;base64,...), or start the server with --allow-urls",
            )
        # Every image is fetched and decoded before any forward runs, so a bad one costs no forward.
        fetched = await fetch_all(fetcher, [u for _, u in remote], [f"input {i}" for i, _ in remote]) if remote else []
        named_bytes = {i: named for (i, _), named in zip(remote, fetched)}  # (name in messages, bytes)
        pixels = await prepare_images(slot, [named_bytes.get(i, (f"input {i}", url)) for i, url in images])
        rows = np.empty((len(texts) + len(images), body.dimensions or slot.model.dim), dtype=np.float32)
        tokens = 0
        if texts:
            vectors, tokens = await embed_texts(slot, [t for _, t in texts], body.task_type, body.dimensions)
            rows[[i for i, _ in texts]] = vectors.numpy()
        if images:
            vectors = finish(await submit(slot, registry.image_kind(slot), pixels, None, settings), body.dimensions)
            rows[[i for i, _ in images]] = vectors.numpy()
        # the runtime that made the vectors; a request whose texts and images ran on different ones names both
        runtimes = slot.model.runtime_names()
        used = [m for m, items in (("text", texts), ("image", images)) if items]
        names = {runtimes[m] for m in used}
        runtime = names.pop() if len(names) == 1 else ", ".join(f"{runtimes[m]} ({m})" for m in used)
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(row, body.encoding_format)}
            for i, row in enumerate(rows)
        ]
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": slot.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "images": len(images)},
                "space": slot.model.space,
                "runtime": runtime,
            }
        )

    # -- images -----------------------------------------------------------------------------------
    async def prepare_images(slot: Slot, named: list[tuple[str, bytes | str]]) -> list[torch.Tensor]:
        """(name, bytes or a data URL) -> the model's input tensors, decoded on the decode threads;
        the first bad image, by position, is the error answered (400, 413 or 415)."""
        loop = asyncio.get_running_loop()
        prepare = slot.model.preprocess_image
        jobs = [
            loop.run_in_executor(decode_pool, decode_and_prepare, data, name, settings.max_pixels, prepare)
            for name, data in named
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise image_error(result)
        return results  # type: ignore[return-value]

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
        model_name, uploads, urls, dimensionality = await read_image_form(request, settings)
        slot = registry.get(model_name)
        require_modality(slot, "image")
        check_items(len(uploads) + len(urls), settings)
        check_dimensionality(dimensionality, slot.model.dim)
        if urls and fetcher is None:
            raise ApiError(
                400,
                "remote image URLs are disabled on this server: upload the images as "
                "'images' file parts, or start the server with --allow-urls",
            )
        named = [(f"image {i} ({u.filename or 'unnamed'})", await u.read()) for i, u in enumerate(uploads)]
        if urls:  # numbered after the uploads, which come first in the answer
            named += await fetch_all(fetcher, urls, [f"url {i}" for i in range(len(uploads), len(uploads) + len(urls))])
        pixels = await prepare_images(slot, named)
        rows = await submit(slot, registry.image_kind(slot), pixels, None, settings)
        return nomic_response(finish(rows, dimensionality), slot, 0, "image")

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
        require_modality(slot, "image")
        loop = asyncio.get_running_loop()
        try:
            pixels = await loop.run_in_executor(
                decode_pool, decode_and_prepare, data, name, settings.max_pixels, slot.model.preprocess_image
            )
        except Exception as e:  # noqa: BLE001 - mapped to 400 / 413 / 415 like the embedding route
            raise image_error(e) from e
        return query_vector(await submit(slot, registry.image_kind(slot), [pixels], None, settings))

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
        read_image_form=lambda request, field: read_form_files(request, settings, field),
    )
    add_duplicate_routes(app, collections=collections, require_key=require_key, errors=errors)

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

    @app.get("/duplicates", include_in_schema=False)
    async def duplicates_page() -> FileResponse:
        return FileResponse(web / "duplicates.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
