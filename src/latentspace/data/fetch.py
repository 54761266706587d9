"""Fetch image bytes from user-supplied URLs without opening an SSRF hole.

The server fetching "the image at this URL" on a user's behalf can be turned into a proxy into
the server's own network: `http://127.0.0.1:...`, `http://169.254.169.254/` (cloud credentials),
an internal admin page, or a public name whose DNS points at any of those. Every request here
therefore goes through the same steps, and again for every redirect:

1. the URL must be http(s), without userinfo, with a valid port and a well-formed host;
2. the host is resolved once and *every* address it resolves to must be public (unless the
   operator listed the host in `FetchPolicy.allowed_hosts`);
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
import re
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

_SCHEMES = {"http": 80, "https": 443}
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_MAX_URL_CHARS = 8192
_SHOWN_URL_CHARS = 160
_SHOWN_DETAIL_CHARS = 200
_USER_AGENT = "latentspace-image-fetch/1"
_ONLY_PUBLIC = "only public addresses may be fetched"
# A hostname after IDNA encoding: letters, digits, hyphens, underscores (seen in real DNS), dots.
# Anything else ('%', '\\', spaces...) is something some parser would read differently.
_HOSTNAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_NUMERIC_LABEL = re.compile(r"^([0-9]+|0x[0-9a-f]*)$")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:)?//[^/?#]*@")

# Addresses that serve instance credentials or host configuration to whoever asks. Most fall in
# ranges refused anyway (link-local, unique-local, shared); they are named so the message says
# what they are, and the two that are otherwise "public" (Azure's WireServer, Oracle's metadata)
# are refused at all.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, OpenStack...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud
    )
)
# Ranges that `ipaddress` (depending on the Python version) calls global but that no public
# image host lives in.
_NOT_PUBLIC_NETWORKS = (
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space (carrier-grade NAT)"),
    (ipaddress.ip_network("192.0.0.0/24"), "reserved for IETF protocol assignments"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a local-use NAT64 prefix"),
)
# IPv6 forms that carry an IPv4 address in their low 32 bits (besides IPv4-mapped and 6to4,
# which `ipaddress` decodes itself). A packet to one of these ends up at the IPv4 address.
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


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


class _Refusal(Exception):
    """Internal: why a fetch stopped. `UrlFetcher.fetch` turns it into a `UrlRefused`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- showing URLs in messages ---------------------------------------------------------------


def display_url(url: str, limit: int = _SHOWN_URL_CHARS) -> str:
    """`url` made safe to put in an error message or a log.

    Userinfo (`user:password@`) and the query string (signed URLs carry their signature there)
    are hidden, the fragment dropped, unprintable characters replaced and the result truncated.
    """
    text = url.split("#", 1)[0]
    base, has_query, _query = text.partition("?")
    shown = _USERINFO.sub(lambda m: f"{m.group(1) or ''}//***@", base)
    if has_query:
        shown += "?…"
    shown = "".join(ch if ch.isprintable() else "?" for ch in shown)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _short(text: str, limit: int = _SHOWN_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- parsing and checking one URL -----------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One URL, parsed and checked for everything that does not need DNS."""

    url: httpx.URL
    host: str  # ASCII, lower case, no trailing dot (an IP literal as written): for allowed_hosts, SNI
    port: int
    ip: IPAddress | None  # set when the host is an address, however it was written
    host_header: str  # the Host header the server expects: host, and the port if not default


def _parse_target(raw: str) -> _Target:
    if len(raw) > _MAX_URL_CHARS:
        raise _Refusal(f"the URL is longer than {_MAX_URL_CHARS} characters")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _Refusal(_invalid_url_reason(raw, exc)) from exc

    if not url.scheme:
        raise _Refusal("the URL has no scheme; only http:// and https:// URLs may be fetched")
    if url.scheme not in _SCHEMES:
        raise _Refusal(f"scheme '{_short(url.scheme, 20)}' is not allowed; only http and https URLs may be fetched")
    if url.userinfo:
        raise _Refusal(
            "URLs with a user name or password (user:pass@host) are not fetched; "
            "put the image at a URL that needs no credentials"
        )
    port = url.port if url.port is not None else _SCHEMES[url.scheme]
    if not 1 <= port <= 65535:
        raise _Refusal(f"port {port} is not a valid port (1-65535)")

    host, ip = _parse_host(url)
    return _Target(
        url=url.copy_with(fragment=None),
        host=host,
        port=port,
        ip=ip,
        host_header=url.netloc.decode("ascii"),
    )


def _invalid_url_reason(raw: str, exc: Exception) -> str:
    # httpx refuses dotted quads it cannot read ("0177.0.0.1"); say what address they mean.
    try:
        host = urllib.parse.urlsplit(raw).hostname or ""
    except ValueError:
        host = ""
    ip = parse_ipv4_loosely(host) if _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]) else None
    if ip is None:
        return f"not a valid URL ({_short(str(exc))})"
    problem = address_problem(ip)
    if problem is not None:
        return f"host {host} is the address {ip}, which is {problem}; {_ONLY_PUBLIC}"
    return f"host {host} is an unusual spelling of the address {ip}; write it as {ip}"


def _parse_host(url: httpx.URL) -> tuple[str, IPAddress | None]:
    """The host as a comparable string, and as an address when it is one."""
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise _Refusal("the URL has no host")
    if ":" in host:  # httpx only lets an IPv6 literal (from [brackets]) contain a colon
        try:
            ip: IPAddress = ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError as exc:
            raise _Refusal(f"'{_short(host, 60)}' is not a valid IPv6 address") from exc
        return host.replace("%25", "%"), ip
    host = host.rstrip(".")
    if not _HOSTNAME.match(host):
        raise _Refusal(f"host '{_short(host, 60)}' contains characters not allowed in a hostname")
    # Browsers and libc read "2130706433", "0x7f.1", "0177.0.0.1" and "127.1" as 127.0.0.1. Read
    # them the same way here, so the address check sees the address the connection would reach
    # whichever resolver is in use.
    if _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        ip4 = parse_ipv4_loosely(host)
        if ip4 is None:
            raise _Refusal(f"host '{_short(host, 60)}' looks like an IPv4 address but is not a valid one")
        return host, ip4
    return host, None


def parse_ipv4_loosely(host: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 address in any form the WHATWG URL standard (and `inet_aton`) accepts.

    One to four dot-separated numbers, each decimal, octal (leading 0) or hex (0x); the last
    fills the remaining bytes. Returns None when `host` is not such an address.
    """
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()  # a trailing dot
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for position, number in enumerate(leading):
        value += number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    part = part.lower()
    try:
        if part.startswith("0x"):
            return int(part[2:], 16) if part[2:] else 0
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def address_problem(ip: IPAddress) -> str | None:
    """Why a server must not fetch from `ip` ("loopback", "private", ...), or None if public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, ip4 = embedded
            problem = _named_problem(ip4)
            return None if problem is None else f"{form} form of {ip4}, which is {problem}"
        if ip.scope_id:
            return "a scoped (interface-local) address"
    return _named_problem(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """For IPv6 forms that deliver to an IPv4 address, that address (and the form's name).

    Python's `ipaddress` judges these by their IPv6 prefix: on Python 3.11 `::ffff:127.0.0.1` is
    not loopback and `64:ff9b::7f00:1` / `2002:7f00:1::` count as global. What matters is the
    IPv4 address the packet ends up at.
    """
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped", ip.ipv4_mapped
    if ip in _IPV4_TRANSLATED:
        return "an IPv4-translated", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64_WELL_KNOWN:
        return "a NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "a 6to4", ip.sixtofour
    return None


def _named_problem(ip: IPAddress) -> str | None:
    # Order matters only for the wording: the most specific name first.
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "unspecified (it means this host)"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:  # is_global is True for most multicast: check it explicitly
        return "multicast"
    for network, name in _NOT_PUBLIC_NETWORKS:
        if ip in network:
            return name
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


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
        except _Refusal as exc:
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
        raise _Refusal(f"more than {self._policy.max_redirects} redirects (the last one to {display_url(current)})")

    async def _visit(self, url: str, *, redirected: bool) -> bytes | str:
        """One hop, checked from scratch: the body, or the absolute URL a redirect points to."""
        try:
            target = _parse_target(url)
            addresses = await self._vetted_addresses(target)
        except _Refusal as exc:
            # re-raised as is, or restated for the URL the client sent (the cause is in the text)
            raise _after_redirect(exc, url, "which is refused") if redirected else exc  # noqa: B904
        try:
            outcome = await self._get(target, addresses)
        except _Refusal as exc:
            raise _after_redirect(exc, url, "which failed") if redirected else exc  # noqa: B904
        if isinstance(outcome, bytes):
            return outcome
        # Relative to the URL as the user gave it, not to the address we connected to.
        try:
            return str(target.url.join(outcome.location))
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise _Refusal(f"the server redirected to an invalid URL ({_short(str(exc))})") from exc

    # --- DNS --------------------------------------------------------------------------------

    async def _vetted_addresses(self, target: _Target) -> list[IPAddress]:
        """The addresses to connect to, each one checked (unless the host is allowed)."""
        if target.ip is not None:
            addresses = [target.ip]
        else:
            addresses = await self._resolve_host(target)
        if not self._is_allowed(target):
            # Refuse if *any* address is not public, not just the first: the connection may end
            # up at any of them (a name with one public and one private address is a known trick).
            for ip in addresses:
                problem = address_problem(ip)
                if problem is not None:
                    raise _Refusal(f"{_describe_host(target, ip)} {problem}; {_ONLY_PUBLIC}")
        return [_unmap(ip) for ip in addresses]

    def _is_allowed(self, target: _Target) -> bool:
        allowed = self._policy.allowed_hosts
        return target.host in allowed or (target.ip is not None and str(target.ip) in allowed)

    async def _resolve_host(self, target: _Target) -> list[IPAddress]:
        try:
            found = await self._resolve(target.host, target.port)
        except OSError as exc:  # socket.gaierror and friends
            detail = exc.strerror or str(exc) or type(exc).__name__
            raise _Refusal(f"could not resolve host {target.host} ({_short(detail)})") from exc
        addresses: list[IPAddress] = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text))
            except ValueError as exc:
                raise _Refusal(
                    f"the resolver returned {_short(repr(text), 60)} for host {target.host}, which is not an address"
                ) from exc
        if not addresses:
            raise _Refusal(f"host {target.host} has no addresses")
        return addresses

    # --- HTTP -------------------------------------------------------------------------------

    async def _get(self, target: _Target, addresses: list[IPAddress]) -> bytes | _Redirect:
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

    async def _get_from(self, target: _Target, ip: IPAddress) -> bytes | _Redirect:
        # Pin the connection to `ip`, the address that was checked: the request URL names the
        # address, so httpx connects to it without a DNS lookup of its own. The server still sees
        # the hostname in the Host header and, for https, in SNI; and the certificate is verified
        # against the hostname (httpcore passes `sni_hostname` to ssl as server_hostname).
        try:
            pinned = target.url.copy_with(host=str(ip))
        except httpx.InvalidURL as exc:  # e.g. a scoped IPv6 address from an allowed host
            raise _Refusal(f"cannot connect to address {ip}") from exc
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
                raise _Refusal(f"the server answered HTTP {status} (a redirect) without a Location")
            return _Redirect(location)
        if not 200 <= status < 300:
            phrase = httpx.codes.get_reason_phrase(status)
            raise _Refusal(f"the server answered HTTP {status}{' ' + phrase if phrase else ''}, not an image")
        limit = self._policy.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise _Refusal(f"the image is {declared} bytes, over the {limit}-byte limit")
        # Count while streaming: a missing or lying Content-Length must not let a body through
        # (or into memory) past the cap.
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise _Refusal(f"the body exceeds the {limit}-byte limit (stopped reading)")
        return bytes(body)

    def _network_refusal(self, exc: httpx.RequestError) -> _Refusal:
        """A network error as a message. httpx's texts describe the socket or TLS layer
        ("Connection refused", "certificate verify failed"), never request headers."""
        policy = self._policy
        detail = _short(str(exc)) or type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return _Refusal(f"timed out connecting to the server (limit {policy.connect_timeout:g} s)")
        if isinstance(exc, httpx.ReadTimeout):
            return _Refusal(f"timed out waiting for the server to send data (limit {policy.read_timeout:g} s)")
        if isinstance(exc, httpx.TimeoutException):
            return _Refusal(f"timed out talking to the server ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            return _Refusal(f"could not connect to the server ({detail})")
        if isinstance(exc, httpx.RemoteProtocolError):
            return _Refusal(f"the server broke off or sent malformed HTTP ({detail})")
        return _Refusal(f"the fetch failed ({detail})")


def _after_redirect(exc: _Refusal, url: str, outcome: str) -> _Refusal:
    refusal = _Refusal(f"redirected to {display_url(url)}, {outcome}: {exc.reason}")
    refusal.__cause__ = exc.__cause__
    return refusal


def _describe_host(target: _Target, ip: IPAddress) -> str:
    """The start of "<host> ... is <problem>", naming the address the host turned out to be."""
    if target.ip is None:
        return f"host {target.host} resolves to {ip}, which is"
    if ip.version == 4 and target.host != str(ip):  # "2130706433", "0x7f.1"
        return f"host {target.host} is the address {ip}, which is"
    return f"address {target.host} is"


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
