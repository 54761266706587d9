"""Bearer-key authentication. Keys are compared in constant time and never logged."""

from __future__ import annotations

import hmac

from latentspace.serve.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="latentspace"'}


class BearerAuth:
    def __init__(self, keys: tuple[str, ...]):
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless `authorization` is 'Bearer <a configured key>' (or auth is off)."""
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", CHALLENGE)
        given = token.strip().encode()
        # Compare against every key (no early exit), so timing says nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "invalid API key", CHALLENGE)
