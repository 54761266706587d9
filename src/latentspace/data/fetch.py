"""Fetch image bytes from user-supplied URLs without opening an SSRF hole.

The server fetching "the image at this URL" on a user's behalf can be turned into a proxy into
the server's own network: `http://127.0.0.1:...`, `http://169.254.169.254/` (cloud credentials),
an internal admin page, or a public name whose DNS points at any of those. Every request here
therefore goes through the same steps, and again for every redirect:

1. the URL must be http(s), without userinfo, with a valid port and a well-formed host;
2. the host is resolved once and *every* address it resolves to must be public (unless the
   operator listed the host in `FetchPolicy.allowed_hosts`);
   (steps 1 and 2 judge the URL and the addresses without the network: data/url_checks.py)
3. the connection goes to one of exactly those checked addresses. We never hand the hostname to
   the HTTP library, which would resolve it a second time; a DNS server answering "public" to the
   check and "127.0.0.1" to the connect (DNS rebinding) would otherwise win.

Redirects are followed by hand, each one a fresh trip through these steps; bodies are streamed
with a byte cap; connect, read and overall time limits apply. Every failure is a `UrlRefused`
whose message names the URL (query string and userinfo hidden) and says what to change.

Two callers share it, so it lives below both: the server (images sent as URLs) and collection
builds (tables of URLs, fetched from worker threads through `BlockingFetcher`). `FetchPolicy`
owns the default limits; the server's settings take their defaults from it.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import httpx

from latentspace.data.url_checks import (
    IPAddress,
    Refusal,
    Target,
    display_url,
    parse_target,
    refuse_unless_public,
    shorten,
)

Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_USER_AGENT = "latentspace-image-fetch/1"


class UrlRefused(ValueError):
    """A URL the server will not fetch, or whose fetch failed; the message says why.

    `str(exc)` reads like "url 2 (http://10.0.0.1/a.png): address 10.0.0.1 is private; only
    public addresses may be fetched". `url` is the URL as shown (query and userinfo hidden,
    truncated), `reason` the part after the colon.
    """

    def __init__(self, reason: str, *, url: str, label: str = "url") -> None:
        self.reason = reason
        self.url = url
        self.label = label
        super().__init__(f"{label} ({url}): {reason}")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching remote images. Times are in seconds."""

    max_bytes: int = 20 * 2**20
    connect_timeout: float = 10.0
    read_timeout: float = 10.0
    total_timeout: float = 30.0
    max_redirects: int = 3
    # Hostnames (exact, case-insensitive; IP literals also work) exempt from the public-address
    # check, for an operator's internal image host. Scheme, userinfo and port checks still apply,
    # and a redirect away from such a host is checked like any other URL.
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def with_limits(
        cls,
        *,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
        max_redirects: int | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> FetchPolicy:
        """The policy from the three limits users set (None: the default). One timeout bounds the
        connect and each read; the whole fetch may take three times as long."""
        default = DEFAULT_POLICY
        timeout = default.read_timeout if timeout_s is None else timeout_s
        return cls(
            max_bytes=default.max_bytes if max_bytes is None else max_bytes,
            connect_timeout=timeout,
            read_timeout=timeout,
            total_timeout=3 * timeout,
            max_redirects=default.max_redirects if max_redirects is None else max_redirects,
            allowed_hosts=frozenset(allowed_hosts),
        )

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {self.max_bytes}")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be 0 or more, not {self.max_redirects}")
        # Accept any iterable of names and store them in the form hosts are compared in.
        normalised = frozenset(_normalise_allowed_host(h) for h in _as_iterable(self.allowed_hosts))
        object.__setattr__(self, "allowed_hosts", normalised)


def _as_iterable(hosts: Iterable[str] | str) -> Iterable[str]:
    return [hosts] if isinstance(hosts, str) else hosts


def _normalise_allowed_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


DEFAULT_POLICY = FetchPolicy()  # the limits anyone gets who sets none


# --- the fetcher ----------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the system resolver's order of preference."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class _Redirect:
    location: str


class UrlFetcher:
    """Fetches image bytes from URLs under a `FetchPolicy`. One instance serves many requests.

    `resolver(host, port)` returns the host's addresses (default: the system's getaddrinfo);
    `transport` replaces httpx's network transport (tests; a custom TLS context). A transport
    given here should not keep connections alive: pooled connections are keyed by address, so
    a kept TLS connection verified for one hostname could serve another on the same address.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolver or system_resolver
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                retries=0,
                trust_env=False,
                # See the class docstring: no connection reuse across hostnames.
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,  # redirects are checked and followed in _fetch
            trust_env=False,  # no proxy from the environment, no credentials from ~/.netrc
            # Never store cookies: one user's fetch must not carry cookies into another's.
            cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx.Timeout(
                connect=policy.connect_timeout,
                read=policy.read_timeout,
                write=policy.read_timeout,
                pool=policy.connect_timeout,
            ),
            headers={"User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    @property
    def policy(self) -> FetchPolicy:
        return self._policy

    async def fetch(self, url: str, *, label: str = "url") -> bytes:
        """The body at `url`, or `UrlRefused` saying why not. `label` starts the message
        ("url 2") so a request with many URLs can say which one failed."""
        shown = display_url(url)
        try:
            with anyio.fail_after(self._policy.total_timeout):
                return await self._fetch(url)
        except Refusal as exc:
            raise UrlRefused(exc.reason, url=shown, label=label) from exc.__cause__
        except TimeoutError:
            reason = f"gave up after {self._policy.total_timeout:g} s (the time limit for one URL)"
            raise UrlRefused(reason, url=shown, label=label) from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> UrlFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _fetch(self, url: str) -> bytes:
        current = url
        for hop in range(self._policy.max_redirects + 1):
            outcome = await self._visit(current, redirected=hop > 0)
            if isinstance(outcome, bytes):
                return outcome
            current = outcome
        raise Refusal(f"more than {self._policy.max_redirects} redirects (the last one to {display_url(current)})")

    async def _visit(self, url: str, *, redirected: bool) -> bytes | str:
        """One hop, checked from scratch: the body, or the absolute URL a redirect points to."""
        try:
            target = parse_target(url)
            addresses = await self._vetted_addresses(target)
        except Refusal as exc:
            # re-raised as is, or restated for the URL the client sent (the cause is in the text)
            raise _after_redirect(exc, url, "which is refused") if redirected else exc  # noqa: B904
        try:
            outcome = await self._get(target, addresses)
        except Refusal as exc:
            raise _after_redirect(exc, url, "which failed") if redirected else exc  # noqa: B904
        if isinstance(outcome, bytes):
            return outcome
        # Relative to the URL as the user gave it, not to the address we connected to.
        try:
            return str(target.url.join(outcome.location))
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise Refusal(f"the server redirected to an invalid URL ({shorten(str(exc))})") from exc

    # --- DNS --------------------------------------------------------------------------------

    async def _vetted_addresses(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to, each one checked (unless the host is allowed)."""
        if target.ip is not None:
            addresses = [target.ip]
        else:
            addresses = await self._resolve_host(target)
        if not self._is_allowed(target):
            refuse_unless_public(target, addresses)
        return [_unmap(ip) for ip in addresses]

    def _is_allowed(self, target: Target) -> bool:
        allowed = self._policy.allowed_hosts
        return target.host in allowed or (target.ip is not None and str(target.ip) in allowed)

    async def _resolve_host(self, target: Target) -> list[IPAddress]:
        try:
            found = await self._resolve(target.host, target.port)
        except OSError as exc:  # socket.gaierror and friends
            detail = exc.strerror or str(exc) or type(exc).__name__
            raise Refusal(f"could not resolve host {target.host} ({shorten(detail)})") from exc
        addresses: list[IPAddress] = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text))
            except ValueError as exc:
                raise Refusal(
                    f"the resolver returned {shorten(repr(text), 60)} for host {target.host}, which is not an address"
                ) from exc
        if not addresses:
            raise Refusal(f"host {target.host} has no addresses")
        return addresses

    # --- HTTP -------------------------------------------------------------------------------

    async def _get(self, target: Target, addresses: list[IPAddress]) -> bytes | _Redirect:
        """GET `target` from the first of `addresses` that accepts a connection."""
        last_error: httpx.RequestError | None = None
        for ip in addresses:
            try:
                return await self._get_from(target, ip)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc  # try the next address, as a browser would
            except httpx.RequestError as exc:
                raise self._network_refusal(exc) from exc
        assert last_error is not None
        raise self._network_refusal(last_error) from last_error

    async def _get_from(self, target: Target, ip: IPAddress) -> bytes | _Redirect:
        # Pin the connection to `ip`, the address that was checked: the request URL names the
        # address, so httpx connects to it without a DNS lookup of its own. The server still sees
        # the hostname in the Host header and, for https, in SNI; and the certificate is verified
        # against the hostname (httpcore passes `sni_hostname` to ssl as server_hostname).
        try:
            pinned = target.url.copy_with(host=str(ip))
        except httpx.InvalidURL as exc:  # e.g. a scoped IPv6 address from an allowed host
            raise Refusal(f"cannot connect to address {ip}") from exc
        extensions = {}
        if target.url.scheme == "https" and target.ip is None:
            extensions["sni_hostname"] = target.host
        request = self._client.build_request("GET", pinned, headers={"Host": target.host_header}, extensions=extensions)
        response = await self._client.send(request, stream=True)
        try:
            return await self._read(response)
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response) -> bytes | _Redirect:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise Refusal(f"the server answered HTTP {status} (a redirect) without a Location")
            return _Redirect(location)
        if not 200 <= status < 300:
            phrase = httpx.codes.get_reason_phrase(status)
            raise Refusal(f"the server answered HTTP {status}{' ' + phrase if phrase else ''}, not an image")
        limit = self._policy.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise Refusal(f"the image is {declared} bytes, over the {limit}-byte limit")
        # Count while streaming: a missing or lying Content-Length must not let a body through
        # (or into memory) past the cap.
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise Refusal(f"the body exceeds the {limit}-byte limit (stopped reading)")
        return bytes(body)

    def _network_refusal(self, exc: httpx.RequestError) -> Refusal:
        """A network error as a message. httpx's texts describe the socket or TLS layer
        ("Connection refused", "certificate verify failed"), never request headers."""
        policy = self._policy
        detail = shorten(str(exc)) or type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return Refusal(f"timed out connecting to the server (limit {policy.connect_timeout:g} s)")
        if isinstance(exc, httpx.ReadTimeout):
            return Refusal(f"timed out waiting for the server to send data (limit {policy.read_timeout:g} s)")
        if isinstance(exc, httpx.TimeoutException):
            return Refusal(f"timed out talking to the server ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            return Refusal(f"could not connect to the server ({detail})")
        if isinstance(exc, httpx.RemoteProtocolError):
            return Refusal(f"the server broke off or sent malformed HTTP ({detail})")
        return Refusal(f"the fetch failed ({detail})")


def _after_redirect(exc: Refusal, url: str, outcome: str) -> Refusal:
    refusal = Refusal(f"redirected to {display_url(url)}, {outcome}: {exc.reason}")
    refusal.__cause__ = exc.__cause__
    return refusal


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value.split(",")[0].strip())
    except ValueError:
        return None  # a nonsense header is caught by h11 or by the streaming cap


def _unmap(ip: IPAddress) -> IPAddress:
    """`::ffff:a.b.c.d` is a.b.c.d: connect to it over IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class BlockingFetcher:
    """`UrlFetcher` for code that runs on plain threads (a collection build's decode pool).

    One event loop runs in a background thread; each `fetch` schedules a coroutine there and
    waits, so many worker threads can have fetches in flight at once."""

    def __init__(self, policy: FetchPolicy = DEFAULT_POLICY, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="url-fetch", daemon=True)
        self._thread.start()
        self._fetcher = asyncio.run_coroutine_threadsafe(self._make(resolver), self._loop).result()

    async def _make(self, resolver: Resolver | None) -> UrlFetcher:
        return UrlFetcher(self.policy, resolver=resolver)

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`; raises UrlRefused saying why not."""
        return asyncio.run_coroutine_threadsafe(self._fetcher.fetch(url, label="url"), self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._fetcher.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> BlockingFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
