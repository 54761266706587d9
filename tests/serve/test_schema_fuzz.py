"""Schema-driven fuzzing of the HTTP API: schemathesis reads the app's OpenAPI spec and sends
requests made from it (its examples, boundary cases, then generated bodies, valid and invalid)
to the app in this process. Every answer must be a 200 or a 4xx, with a status, content type,
body and headers the spec documents for that operation, and a route that asks for a key must
refuse a request without one.

Bounded and reproducible: at most 15 generated examples per operation (plus the examples and
boundary cases the spec gives), derandomized, no example database. The app is the one
test_openapi.py checks by hand: the tiny model, a collection built with it, and a key.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from latentspace.serve.app import create_app
from latentspace.serve.settings import ServeSettings

import fakes

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from schemathesis.checks import (  # noqa: E402 - after the importorskip
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "fuzz-test-key-0123456"
CONFIG = {
    "headers": {"Authorization": f"Bearer {KEY}"},
    "generation": {"max-examples": 15, "deterministic": True, "database": "none"},
    # most collection requests name the real collection, so they get past the 404 to its search
    "dictionaries": {"collections": {"values": ["drawings"]}},
    "parameters": {"path.name": {"dictionary": "collections", "probability": 0.75}},
    # stateful runs chain operations through links; this API declares none
    "phases": {"stateful": {"enabled": False}},
    "suppress-health-check": ["too_slow"],  # a request runs a forward: slow by Hypothesis's standard
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]


def make_app(served_dir: Path, collection: Path):
    return create_app(
        ServeSettings(
            models=[f"tiny={served_dir}"],
            collections=[f"drawings={collection}"],
            api_keys=(KEY,),
            max_items=4,
            max_body_bytes=256 * 1024,
            max_pixels=1_000_000,
            decode_threads=1,
            image_runtime="torch",
            image_precision="fp32",
            text_runtime="torch",
            text_precision="fp32",
        )
    )


class AppUnderTest:
    """The ASGI app schemathesis sends to, standing in for the app the fixture builds.

    schemathesis makes its tests when this module is collected, before any fixture runs, and its
    checks re-send requests through the app the schema names, so the schema names this stand-in
    and the fixture plugs the real app in. It answers lifespan events itself: schemathesis's
    pytest plugin ends an app's lifespan after every test and starts it again on the next
    request, while this app loads its models once, in its real lifespan (the fixture's TestClient).
    """

    app = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


# The spec depends on the settings, not on the files they name: an app built with placeholder
# paths (never started, so nothing loads) gives it now, and the fixture checks that the app under
# test documents exactly the same.
SPEC = make_app(Path("placeholder-model"), Path("placeholder-collection")).openapi()
APP = AppUnderTest()
schema = schemathesis.openapi.from_dict(SPEC, config=schemathesis.Config.from_dict(CONFIG))
schema.app = APP  # what from_asgi sets; from_dict has no argument for it


@pytest.fixture(scope="module")
def app_under_test(served_dir, tmp_path_factory):
    directory = fakes.drawn_collection(tmp_path_factory.mktemp("fuzz"), served_dir, fakes.CONCEPTS[:4])
    app = make_app(served_dir, directory)
    with TestClient(app) as client:  # the app's lifespan: its models load in the background
        assert client.get("/openapi.json").json() == SPEC
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the fuzzed app did not become ready"
            time.sleep(0.05)
        APP.app = app
        yield
        APP.app = None


@schema.parametrize()
def test_every_answer_is_documented_and_never_a_server_error(case, app_under_test):
    case.call_and_validate(checks=CHECKS)
