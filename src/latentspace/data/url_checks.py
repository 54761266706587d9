"""Which URLs and addresses a server may fetch from: the checks that need no network.

A URL a user hands the server is parsed and checked before anything is resolved or connected to
(`parse_target`): http(s) only, no userinfo, a valid port, a well-formed host, and an IP literal
read the way browsers and libc read it ("2130706433" and "0x7f.1" are 127.0.0.1). Every address
the host turns out to be is then judged by `address_problem` (loopback, private, link-local,
cloud metadata, IPv6 forms that carry any of those...), and `refuse_unless_public` refuses the
host if any one of them is not public. `display_url` hides credentials and query strings
wherever a URL is shown.

data/fetch.py does the network side (DNS, the pinned connection, redirects, limits) and calls
these checks for every hop; a check that fails raises `Refusal`, which the fetcher turns into the
`UrlRefused` its callers see.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {"http": 80, "https": 443}  # the schemes fetched, and their default ports
_MAX_URL_CHARS = 8192
_SHOWN_URL_CHARS = 160
_SHOWN_DETAIL_CHARS = 200
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


class Refusal(Exception):
    """Why a URL is not fetched (or its fetch stopped): the fetcher turns it into a `UrlRefused`
    that names the URL."""

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


def shorten(text: str, limit: int = _SHOWN_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- parsing and checking one URL -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One URL, parsed and checked for everything that does not need DNS."""

    url: httpx.URL
    host: str  # ASCII, lower case, no trailing dot (an IP literal as written): for allowed_hosts, SNI
    port: int
    ip: IPAddress | None  # set when the host is an address, however it was written
    host_header: str  # the Host header the server expects: host, and the port if not default


def parse_target(raw: str) -> Target:
    if len(raw) > _MAX_URL_CHARS:
        raise Refusal(f"the URL is longer than {_MAX_URL_CHARS} characters")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise Refusal(_invalid_url_reason(raw, exc)) from exc

    if not url.scheme:
        raise Refusal("the URL has no scheme; only http:// and https:// URLs may be fetched")
    if url.scheme not in _SCHEMES:
        raise Refusal(f"scheme '{shorten(url.scheme, 20)}' is not allowed; only http and https URLs may be fetched")
    if url.userinfo:
        raise Refusal(
            "URLs with a user name or password (user:pass@host) are not fetched; "
            "put the image at a URL that needs no credentials"
        )
    port = url.port if url.port is not None else _SCHEMES[url.scheme]
    if not 1 <= port <= 65535:
        raise Refusal(f"port {port} is not a valid port (1-65535)")

    host, ip = _parse_host(url)
    return Target(
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
        return f"not a valid URL ({shorten(str(exc))})"
    problem = address_problem(ip)
    if problem is not None:
        return f"host {host} is the address {ip}, which is {problem}; {_ONLY_PUBLIC}"
    return f"host {host} is an unusual spelling of the address {ip}; write it as {ip}"


def _parse_host(url: httpx.URL) -> tuple[str, IPAddress | None]:
    """The host as a comparable string, and as an address when it is one."""
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise Refusal("the URL has no host")
    if ":" in host:  # httpx only lets an IPv6 literal (from [brackets]) contain a colon
        try:
            ip: IPAddress = ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError as exc:
            raise Refusal(f"'{shorten(host, 60)}' is not a valid IPv6 address") from exc
        return host.replace("%25", "%"), ip
    host = host.rstrip(".")
    if not _HOSTNAME.match(host):
        raise Refusal(f"host '{shorten(host, 60)}' contains characters not allowed in a hostname")
    # Browsers and libc read "2130706433", "0x7f.1", "0177.0.0.1" and "127.1" as 127.0.0.1. Read
    # them the same way here, so the address check sees the address the connection would reach
    # whichever resolver is in use.
    if _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        ip4 = parse_ipv4_loosely(host)
        if ip4 is None:
            raise Refusal(f"host '{shorten(host, 60)}' looks like an IPv4 address but is not a valid one")
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


def refuse_unless_public(target: Target, addresses: list[IPAddress]) -> None:
    """Raise `Refusal` if any of the addresses `target`'s host is (resolved to) is not public.

    Any, not just the first: the connection may end up at any of them, and a name with one
    public and one private address is a known trick."""
    for ip in addresses:
        problem = address_problem(ip)
        if problem is not None:
            raise Refusal(f"{_describe_host(target, ip)} {problem}; {_ONLY_PUBLIC}")


def _describe_host(target: Target, ip: IPAddress) -> str:
    """The start of "<host> ... is <problem>", naming the address the host turned out to be."""
    if target.ip is None:
        return f"host {target.host} resolves to {ip}, which is"
    if ip.version == 4 and target.host != str(ip):  # "2130706433", "0x7f.1"
        return f"host {target.host} is the address {ip}, which is"
    return f"address {target.host} is"
