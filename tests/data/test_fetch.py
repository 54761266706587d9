"""The SSRF-hardened URL fetcher, against a real HTTP(S) server on loopback and no internet.

Loopback is exactly what the fetcher refuses, so tests reach the local server through a fake
hostname (`images.test`) that an injected resolver maps to 127.0.0.1 and that the policy lists in
`allowed_hosts`. The name exists nowhere else: a fetch that works proves the connection went to
the address the fetcher checked, not to a second DNS lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from latentspace.data.fetch import FetchPolicy, UrlFetcher, UrlRefused
from latentspace.data.url_checks import address_problem, display_url, parse_ipv4_loosely


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = _png_1x1()
BIG = 2_000_000


# --- the test server ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _TestServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host"), self.headers.get("Cookie")))
        path = self.path
        try:
            if path == "/img.png":
                self._reply(200, PNG, content_type="image/png")
            elif path == "/set-cookie.png":
                self._reply(200, PNG, content_type="image/png", extra={"Set-Cookie": "session=abc; Path=/"})
            elif path == "/big":
                self._reply(200, b"\0" * BIG)
            elif path == "/endless":
                self._endless()
            elif path == "/short":
                self._headers(200, {"Content-Length": "1000"})
                self.wfile.write(b"0123456789")  # then the connection closes (HTTP/1.0)
            elif path == "/slow":
                self._headers(200, {"Content-Length": str(len(PNG))})
                self.wfile.flush()
                time.sleep(1.0)
                self.wfile.write(PNG)
            elif path == "/drip":
                self._drip()
            elif path == "/missing":
                self._reply(404, b"not here")
            elif path == "/redirect-to-loopback":
                self._redirect(f"http://127.0.0.1:{self.server.server_port}/img.png")
            elif path == "/redirect-to-file":
                self._redirect("file:///etc/passwd")
            elif path == "/redirect-without-location":
                self._headers(302, {"Content-Length": "0"})
            elif path == "/loop":
                self._redirect("/loop")
            elif path.startswith("/chain/"):
                left = int(path.rsplit("/", 1)[1])
                self._redirect(f"/chain/{left - 1}" if left > 0 else "../img.png")  # relative forms
            else:
                self._reply(404, b"no such test route")
        except OSError:
            pass  # the client hung up on purpose (byte cap, timeout)

    def _headers(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _reply(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        extra: dict[str, str] | None = None,
    ) -> None:
        self._headers(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})})
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._headers(302, {"Location": location, "Content-Length": "0"})

    def _endless(self) -> None:
        """No Content-Length, and more data than anyone should read: only a cap enforced while
        streaming stops this quickly."""
        self._headers(200, {"Content-Type": "image/png"})
        block = b"\0" * 65536
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.wfile.write(block)

    def _drip(self) -> None:
        """A byte every 50 ms: never trips a read timeout, only the overall deadline."""
        self._headers(200, {"Content-Type": "image/png"})
        for _ in range(60):
            self.wfile.write(b"\0")
            self.wfile.flush()
            time.sleep(0.05)


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None, str | None]] = []

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-response are part of the tests


def _serve(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_TestServer]:
    yield from _serve(_TestServer())  # type: ignore[misc]


@pytest.fixture()
def port(server: _TestServer) -> int:
    server.seen.clear()
    return server.server_port


# --- helpers --------------------------------------------------------------------------------


class FakeResolver:
    """Maps hostnames to addresses like a DNS server would, and records every lookup."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = {"images.test": ["127.0.0.1"], **(table or {})}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def fetch(
    url: str,
    *,
    resolver: FakeResolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    label: str = "url",
    **policy: object,
) -> bytes:
    async def go() -> bytes:
        async with UrlFetcher(
            FetchPolicy(**policy),
            resolver=resolver or FakeResolver(),  # type: ignore[arg-type]
            transport=transport,
        ) as fetcher:
            return await fetcher.fetch(url, label=label)

    return asyncio.run(go())


def refusal(url: str, **kwargs: object) -> str:
    with pytest.raises(UrlRefused) as caught:
        fetch(url, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


LOCAL = {"allowed_hosts": frozenset({"images.test"})}


# --- refusals before any connection ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1/", "address 127.0.0.1 is loopback; only public addresses may be fetched"),
        ("http://[::1]/", "address ::1 is loopback"),
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is a cloud metadata address"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://172.16.5.4/", "address 172.16.5.4 is private"),
        ("http://192.168.1.1/", "address 192.168.1.1 is private"),
        ("http://0.0.0.0/", "address 0.0.0.0 is unspecified"),
        ("http://[::]/", "address :: is unspecified"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://240.0.0.1/", "reserved"),
        # numeric spellings of 127.0.0.1 that browsers and libc accept
        ("http://2130706433/", "host 2130706433 is the address 127.0.0.1, which is loopback"),
        ("http://0x7f.1/", "host 0x7f.1 is the address 127.0.0.1, which is loopback"),
        ("http://0x7f000001/", "is the address 127.0.0.1, which is loopback"),
        ("http://0177.0.0.1/", "host 0177.0.0.1 is the address 127.0.0.1, which is loopback"),
        ("http://0x7f.0.0.1/", "host 0x7f.0.0.1 is the address 127.0.0.1, which is loopback"),
        ("http://0xA9.0xFE.0xA9.0xFE/", "is the address 169.254.169.254, which is a cloud metadata address"),
        ("http://127.1/", "is the address 127.0.0.1, which is loopback"),
        ("http://127.0.0.1./", "is loopback"),
        ("http://0/", "is the address 0.0.0.0, which is unspecified"),
        # IPv6 spellings of IPv4 addresses
        ("http://[::ffff:127.0.0.1]/", "an IPv4-mapped form of 127.0.0.1, which is loopback"),
        (
            "http://[::ffff:169.254.169.254]/",
            "an IPv4-mapped form of 169.254.169.254, which is a cloud metadata address",
        ),
        ("http://[64:ff9b::10.0.0.1]/", "a NAT64 form of 10.0.0.1, which is private"),
        ("http://[2002:7f00:1::]/", "a 6to4 form of 127.0.0.1, which is loopback"),
        ("http://[::ffff:0:7f00:1]/", "an IPv4-translated form of 127.0.0.1, which is loopback"),
        ("http://[::127.0.0.1]/", "reserved"),  # IPv4-compatible (deprecated)
    ],
)
def test_non_public_addresses_are_refused_without_dns(url: str, expected: str) -> None:
    resolver = FakeResolver()
    message = refusal(url, resolver=resolver, label="url 2")
    assert message.startswith(f"url 2 ({url}): ")
    assert expected in message
    assert resolver.calls == []  # address literals, however spelt, never go to DNS


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed; only http and https URLs may be fetched"),
        ("ftp://example.com/cat.png", "scheme 'ftp' is not allowed"),
        ("gopher://example.com:70/_SET", "scheme 'gopher' is not allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme 'data' is not allowed"),
        ("example.com/cat.png", "no scheme"),
        ("//example.com/cat.png", "no scheme"),
        ("http:///cat.png", "no host"),
        ("http://example.com:0/", "port 0 is not a valid port"),
        ("http://example.com:70000/", "port 70000 is not a valid port"),
        ("http://exa%6dple.com/", "contains characters not allowed in a hostname"),
        ("http://256.0.0.1/", "not a valid URL (Invalid IPv4 address"),
        ("http://010.8.8.8/", "host 010.8.8.8 is an unusual spelling of the address 8.8.8.8; write it as 8.8.8.8"),
        ("http://1.2.3.4.5/", "looks like an IPv4 address but is not a valid one"),
        ("http://0x100000000/", "looks like an IPv4 address but is not a valid one"),
        ("http://0x7f.1.08/", "looks like an IPv4 address but is not a valid one"),
        ("http://example.123/", "looks like an IPv4 address but is not a valid one"),
        ("http://[::1/", "not a valid URL"),
        ("http://example.com/" + "a" * 9000, "longer than 8192 characters"),
    ],
)
def test_malformed_and_non_http_urls_are_refused(url: str, expected: str) -> None:
    resolver = FakeResolver()
    assert expected in refusal(url, resolver=resolver)
    assert resolver.calls == []


def test_userinfo_is_refused_and_never_echoed() -> None:
    message = refusal("http://user:hunter2@example.com/cat.png")
    assert "user name or password" in message
    assert "hunter2" not in message and "user:hunter2" not in message
    assert "http://***@example.com/cat.png" in message
    # A backslash does not smuggle a host past the check either (httpx reads it as userinfo).
    assert "user name or password" in refusal("http://127.0.0.1\\@example.com/")


def test_hostname_resolving_to_a_private_address_is_refused() -> None:
    resolver = FakeResolver({"intranet.test": ["10.1.2.3"]})
    message = refusal("http://intranet.test/logo.png", resolver=resolver)
    assert "host intranet.test resolves to 10.1.2.3, which is private; only public addresses" in message
    assert resolver.calls == ["intranet.test"]


def test_hostname_with_one_public_and_one_private_address_is_refused() -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200, content=PNG))
    resolver = FakeResolver({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    message = refusal("http://mixed.test/a.png", resolver=resolver, transport=transport)
    assert "host mixed.test resolves to 127.0.0.1, which is loopback" in message
    assert seen == []  # refused before any connection


def test_resolver_answers_are_checked_in_their_mapped_form_too() -> None:
    resolver = FakeResolver({"mapped.test": ["::ffff:10.0.0.1"]})
    assert "IPv4-mapped form of 10.0.0.1, which is private" in refusal("http://mapped.test/", resolver=resolver)


def test_unresolvable_host_is_refused_with_the_reason() -> None:
    message = refusal("http://nowhere.test/a.png")
    assert "could not resolve host nowhere.test (Name or service not known)" in message


# --- where the connection goes --------------------------------------------------------------


def _recording_transport(seen: list[httpx.Request], response: httpx.Response | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response or httpx.Response(200, content=PNG)

    return httpx.MockTransport(handle)


def test_https_connects_to_the_checked_address_with_hostname_as_host_header_and_sni() -> None:
    seen: list[httpx.Request] = []
    resolver = FakeResolver({"cdn.example": ["93.184.216.34"]})
    body = fetch(
        "https://cdn.example:8443/cats/1.png?size=large", resolver=resolver, transport=_recording_transport(seen)
    )
    assert body == PNG
    (request,) = seen
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.url.path == "/cats/1.png" and request.url.query == b"size=large"
    assert request.headers["host"] == "cdn.example:8443"
    assert request.extensions["sni_hostname"] == "cdn.example"
    assert resolver.calls == ["cdn.example"]  # resolved once, by us


def test_ipv6_addresses_are_pinned_too() -> None:
    seen: list[httpx.Request] = []
    resolver = FakeResolver({"v6.example": ["2606:4700::1111"]})
    assert fetch("http://v6.example/a.png", resolver=resolver, transport=_recording_transport(seen)) == PNG
    assert seen[0].url.host == "2606:4700::1111"
    assert seen[0].headers["host"] == "v6.example"
    assert "sni_hostname" not in seen[0].extensions  # plain http: no TLS


def test_public_nat64_address_is_allowed() -> None:
    # A DNS64 resolver on an IPv6-only host answers 64:ff9b::<IPv4>; a public IPv4 inside is fine.
    for public in ("64:ff9b::93.184.216.34", "::ffff:93.184.216.34", "2606:4700::1111", "8.8.8.8"):
        assert address_problem(ipaddress.ip_address(public)) is None, public


def test_cookies_set_by_one_fetch_are_not_sent_by_the_next(server: _TestServer, port: int) -> None:
    async def go() -> None:
        async with UrlFetcher(FetchPolicy(**LOCAL), resolver=FakeResolver()) as fetcher:  # type: ignore[arg-type]
            await fetcher.fetch(f"http://images.test:{port}/set-cookie.png")
            await fetcher.fetch(f"http://images.test:{port}/img.png")

    asyncio.run(go())
    assert [cookie for _, _, cookie in server.seen] == [None, None]


# --- against the loopback server ------------------------------------------------------------


def test_allowed_host_is_fetched_from_the_checked_address(server: _TestServer, port: int) -> None:
    resolver = FakeResolver()
    assert fetch(f"http://images.test:{port}/img.png", resolver=resolver, **LOCAL) == PNG
    assert server.seen == [("/img.png", f"images.test:{port}", None)]
    assert resolver.calls == ["images.test"]


def test_allowed_hosts_match_case_insensitively(port: int) -> None:
    policy = {"allowed_hosts": frozenset({"Images.TEST"})}
    assert fetch(f"http://IMAGES.test.:{port}/img.png", **policy) == PNG  # type: ignore[arg-type]


def test_without_allowed_hosts_the_same_url_is_refused(port: int) -> None:
    message = refusal(f"http://images.test:{port}/img.png")
    assert "host images.test resolves to 127.0.0.1, which is loopback" in message


def test_allowed_looking_url_that_redirects_to_loopback_is_refused(server: _TestServer, port: int) -> None:
    message = refusal(f"http://images.test:{port}/redirect-to-loopback", label="url 1", **LOCAL)
    assert message.startswith(f"url 1 (http://images.test:{port}/redirect-to-loopback): ")
    assert (
        f"redirected to http://127.0.0.1:{port}/img.png, which is refused: "
        "address 127.0.0.1 is loopback; only public addresses may be fetched"
    ) in message
    assert [path for path, _, _ in server.seen] == ["/redirect-to-loopback"]  # never fetched /img.png


def test_redirect_to_a_file_url_is_refused(port: int) -> None:
    message = refusal(f"http://images.test:{port}/redirect-to-file", **LOCAL)
    assert "redirected to file:/etc/passwd, which is refused: scheme 'file' is not allowed" in message


def test_relative_redirects_within_the_limit_are_followed(server: _TestServer, port: int) -> None:
    assert fetch(f"http://images.test:{port}/chain/2", max_redirects=3, **LOCAL) == PNG
    assert [path for path, _, _ in server.seen] == ["/chain/2", "/chain/1", "/chain/0", "/img.png"]


def test_too_many_redirects_are_refused(port: int) -> None:
    message = refusal(f"http://images.test:{port}/chain/3", max_redirects=3, **LOCAL)
    assert f"more than 3 redirects (the last one to http://images.test:{port}/img.png)" in message
    assert "more than 0 redirects" in refusal(f"http://images.test:{port}/chain/0", max_redirects=0, **LOCAL)


def test_redirect_loop_is_refused(server: _TestServer, port: int) -> None:
    message = refusal(f"http://images.test:{port}/loop", max_redirects=3, **LOCAL)
    assert "more than 3 redirects" in message
    assert len(server.seen) == 4  # the first request and three redirects, then stop


def test_redirect_without_location_is_refused(port: int) -> None:
    assert "HTTP 302 (a redirect) without a Location" in refusal(
        f"http://images.test:{port}/redirect-without-location", **LOCAL
    )


def test_error_status_is_refused_naming_it(port: int) -> None:
    assert "the server answered HTTP 404 Not Found, not an image" in refusal(
        f"http://images.test:{port}/missing", **LOCAL
    )


def test_declared_size_over_the_cap_is_refused_up_front(port: int) -> None:
    message = refusal(f"http://images.test:{port}/big", max_bytes=100_000, **LOCAL)
    assert f"the image is {BIG} bytes, over the 100000-byte limit" in message


def test_cap_is_enforced_while_streaming_a_body_without_length(port: int) -> None:
    started = time.monotonic()
    message = refusal(f"http://images.test:{port}/endless", max_bytes=100_000, total_timeout=15, **LOCAL)
    assert "the body exceeds the 100000-byte limit" in message
    assert time.monotonic() - started < 5  # stopped at the cap, not by a timeout


def test_body_exactly_at_the_cap_is_accepted(port: int) -> None:
    assert fetch(f"http://images.test:{port}/img.png", max_bytes=len(PNG), **LOCAL) == PNG
    assert "over the" in refusal(f"http://images.test:{port}/img.png", max_bytes=len(PNG) - 1, **LOCAL)


def test_body_shorter_than_its_content_length_is_refused(port: int) -> None:
    message = refusal(f"http://images.test:{port}/short", **LOCAL)
    assert "the server broke off or sent malformed HTTP" in message


def test_read_timeout(port: int) -> None:
    started = time.monotonic()
    message = refusal(f"http://images.test:{port}/slow", read_timeout=0.3, **LOCAL)
    assert "timed out waiting for the server to send data (limit 0.3 s)" in message
    assert time.monotonic() - started < 0.9


def test_overall_deadline_stops_a_server_that_drips(port: int) -> None:
    started = time.monotonic()
    message = refusal(f"http://images.test:{port}/drip", read_timeout=1.0, total_timeout=0.4, **LOCAL)
    assert "gave up after 0.4 s (the time limit for one URL)" in message
    assert time.monotonic() - started < 1.5


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_a_clear_refusal() -> None:
    message = refusal(f"http://images.test:{_closed_port()}/img.png", **LOCAL)
    assert "could not connect to the server" in message


def test_failure_after_a_redirect_names_the_redirect_target() -> None:
    # images.test redirects to cdn.test (allowed too), which refuses the connection.
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["host"])
        if request.headers["host"] == "images.test":
            return httpx.Response(302, headers={"Location": "http://cdn.test:8080/a.png"})
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    message = refusal(
        "http://images.test/start",
        resolver=FakeResolver({"cdn.test": ["127.0.0.1"]}),
        transport=httpx.MockTransport(handle),
        allowed_hosts=frozenset({"images.test", "cdn.test"}),
    )
    assert seen == ["images.test", "cdn.test:8080"]
    assert (
        "redirected to http://cdn.test:8080/a.png, which failed: "
        "could not connect to the server ([Errno 111] Connection refused)"
    ) in message


def test_next_address_is_tried_when_one_refuses_the_connection(server: _TestServer, port: int) -> None:
    # The test server listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection.
    resolver = FakeResolver({"images.test": ["127.0.0.2", "127.0.0.1"]})
    assert fetch(f"http://images.test:{port}/img.png", resolver=resolver, **LOCAL) == PNG


# --- https against a real TLS server --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list[str]]]:
    """An https server whose certificate is for images.test only, and the names clients sent
    in SNI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=images.test",
            "-addext",
            "subjectAltName=DNS:images.test",
        ],
        check=True,
        capture_output=True,
    )
    sni_names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sslobj, name, ctx: sni_names.append(name)  # type: ignore[assignment,misc,return-value]
    server = _TestServer()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for running in _serve(server):
        yield running.server_port, cert, sni_names


def _tls_transport(cert: Path) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(
        verify=ssl.create_default_context(cafile=str(cert)),
        retries=0,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def test_https_verifies_the_certificate_against_the_hostname_not_the_address(tls_server) -> None:  # type: ignore[no-untyped-def]
    port, cert, sni_names = tls_server
    sni_names.clear()
    body = fetch(f"https://images.test:{port}/img.png", transport=_tls_transport(cert), **LOCAL)
    assert body == PNG
    assert sni_names == ["images.test"]  # the server saw the hostname, though we dialled 127.0.0.1


def test_https_certificate_for_another_name_is_refused(tls_server) -> None:  # type: ignore[no-untyped-def]
    port, cert, _ = tls_server
    resolver = FakeResolver({"other.test": ["127.0.0.1"]})
    message = refusal(
        f"https://other.test:{port}/img.png",
        resolver=resolver,
        transport=_tls_transport(cert),
        allowed_hosts=frozenset({"other.test"}),
    )
    assert "could not connect to the server" in message
    assert "certificate verify failed" in message


# --- pieces ---------------------------------------------------------------------------------


def test_display_url_hides_secrets_and_truncates() -> None:
    assert display_url("https://bucket.example/a.png?X-Amz-Signature=secret#frag") == "https://bucket.example/a.png?…"
    assert display_url("http://u:p@host/x") == "http://***@host/x"
    long = display_url("http://example.com/" + "a" * 1000)
    assert len(long) == 160 and long.endswith("…")
    assert display_url("http://example.com/\x00\n") == "http://example.com/??"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("256.0.0.1", None),
        ("08.0.0.1", None),
        ("1.2.3.4.5", None),
        ("1.2.3.0x", "1.2.3.0"),
        ("4294967296", None),
    ],
)
def test_parse_ipv4_loosely(host: str, expected: str | None) -> None:
    parsed = parse_ipv4_loosely(host)
    assert (None if parsed is None else str(parsed)) == expected


def test_policy_validates_and_normalises() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="read_timeout"):
        FetchPolicy(read_timeout=0)
    with pytest.raises(ValueError, match="max_redirects"):
        FetchPolicy(max_redirects=-1)
    policy = FetchPolicy(allowed_hosts=frozenset({"Images.Example.", "[::FFFF:10.0.0.1]"}))
    assert policy.allowed_hosts == frozenset({"images.example", "::ffff:a00:1"})


def test_allowed_address_literal(port: int) -> None:
    assert fetch(f"http://127.0.0.1:{port}/img.png", allowed_hosts=frozenset({"127.0.0.1"})) == PNG
    assert fetch(f"http://2130706433:{port}/img.png", allowed_hosts=frozenset({"127.0.0.1"})) == PNG


def test_default_resolver_is_the_systems() -> None:
    # "localhost" comes from /etc/hosts: no internet needed.
    async def go() -> str:
        async with UrlFetcher(FetchPolicy()) as fetcher:
            with pytest.raises(UrlRefused) as caught:
                await fetcher.fetch("http://localhost:8080/a.png")
        return str(caught.value)

    message = asyncio.run(go())
    assert "host localhost resolves to" in message and "which is loopback" in message
