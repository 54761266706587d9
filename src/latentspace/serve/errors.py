"""Errors the API returns: JSON `{"detail": message}` (schemas.ErrorResponse) with the right status
and headers. A route lists the statuses it can raise in its `responses=` (schemas.error_responses),
so /openapi.json documents them."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def retry_later(status: int, message: str, seconds: int) -> ApiError:
    """429 / 503: the client should try again after `seconds`."""
    return ApiError(status, message, {"Retry-After": str(seconds)})
