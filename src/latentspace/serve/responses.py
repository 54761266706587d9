"""What the API answers with: embeddings as JSON written straight from float32 arrays, and one
error body (schemas.ErrorResponse) whatever raised the error.

Used by the routes in serve/app.py: `nomic_response` for Nomic's embedding shape, `encode_vector`
for OpenAI's float or base64 rows, `install_error_handlers` for every exception a route, FastAPI's
validation or Starlette can raise.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentspace.serve.errors import ApiError
from latentspace.serve.registry import Slot
from latentspace.serve.schemas import ErrorResponse

log = logging.getLogger(__name__)


def json_response(payload: dict[str, Any]) -> Response:
    """orjson writes float32 arrays directly (shortest round-trip spelling of each float32), several
    times faster than encoding Python floats one by one."""
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def nomic_response(vectors: torch.Tensor, slot: Slot, tokens: int, modality: str) -> Response:
    # `space` and `runtime` are beyond Nomic's shape (clients ignore them): every answer says which
    # space its vectors are in, and which runtime made them.
    return json_response(
        {
            "embeddings": vectors.numpy(),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "model": slot.name,
            "space": slot.model.space,
            "runtime": slot.model.runtime_names()[modality],
        }
    )


def encode_vector(row, encoding_format: str):
    if encoding_format == "base64":  # OpenAI's format: little-endian float32 bytes, base64
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error has one body, the documented ErrorResponse, whatever raised it."""
    return JSONResponse(ErrorResponse(detail=detail).model_dump(), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for e in error.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            message = str(e.get("msg"))
            # a message that starts with its place ("input 2: ...") is not prefixed with it again
            problems.append(message if message.startswith(where) else f"{where}: {message}")
        return error_response(422, "invalid request: " + "; ".join(problems[:10]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its traceback, answered in the documented error shape
        # so clients parse one format whatever happens.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the server log has the details")
