"""Download one URL into a file, behind a guard against server-side request forgery.

A user who may add URLs to a knowledge base must not be able to make the server
read its own loopback services, the cloud metadata endpoint or the private
network. So before every request, the first and each redirect hop:

1. the scheme must be http or https (and allowed by ``knowledge.url_fetch``),
   and the URL may carry no credentials;
2. the host is resolved, and *every* address it resolves to must be public:
   not loopback, private, link-local, multicast, reserved or unspecified,
   including those addresses wrapped in IPv6 forms (``::ffff:127.0.0.1``,
   6to4, Teredo, NAT64), unless ``allow_private`` is set;
3. the connection goes to exactly the addresses that were checked: aiohttp
   resolves through :class:`PinnedResolver`, which only knows vetted answers,
   so a DNS server cannot answer differently the second time (DNS rebinding).

Redirects are followed by hand for that reason. The whole fetch has one
deadline, the body is streamed to disk and cut off past ``max_bytes``, and a
partial file never outlives a failure. Every failure is a :class:`FetchError`
whose message can be shown to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from enclave.errors import InvalidRequest
from enclave.knowledge.extract import short_reason
from enclave.settings import UrlFetchConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
MAX_NAME_CHARS = 255
ALLOW_HINT = "set knowledge.url_fetch.allow_private to allow"
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
USER_AGENT = "Enclave knowledge fetcher (+https://github.com/enclave)"


@dataclass(frozen=True, slots=True)
class FetchedUrl:
    """A downloaded body: ``path`` is a new file in the caller's directory."""

    path: Path
    name: str  # host + path, e.g. "example.org/docs/guide.html"
    media_type: str | None
    final_url: str


class FetchError(InvalidRequest):
    """A URL that cannot be fetched; ``str(exc)`` is a readable reason."""


# ------------------------------------------------------------------ checks
def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (``"a loopback address"``), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and (reason := address_refusal(embedded)):
            return f"{reason} in IPv6 form"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_url(url: URL, config: UrlFetchConfig) -> URL:
    """Refuse a URL whose scheme, credentials or host cannot be fetched."""
    scheme = url.scheme.lower()
    if scheme not in config.schemes or scheme not in ("http", "https"):
        allowed = ", ".join(s for s in config.schemes if s in ("http", "https"))
        raise FetchError(
            f"refused {url}: the scheme {scheme!r} is not allowed (allowed: {allowed})"
        )
    if url.user is not None or url.password is not None:
        raise FetchError(
            f"refused {url.with_user(None)}: a URL with credentials (user:password@) is not allowed"
        )
    if not url.raw_host:
        raise FetchError(f"refused {url}: it has no host")
    return url


def _parse(raw: str) -> URL:
    try:
        url = URL(raw.strip())
        url.port  # noqa: B018 - an invalid port raises only when read
    except (ValueError, TypeError) as exc:
        raise FetchError(f"invalid URL {raw!r}: {exc}") from exc
    if not url.scheme:
        raise FetchError(f"invalid URL {raw!r}: it needs a scheme and a host (https://...)")
    return url


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (tests replace this to fake DNS)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise FetchError(f"could not resolve {host}: {reason}") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(f"could not resolve {host}: no addresses")
    return addresses


class PinnedResolver(AbstractResolver):
    """Answers only with addresses vetted by :func:`fetch_url`, never asks DNS itself."""

    def __init__(self) -> None:
        self._pinned: dict[str, list[IPAddress]] = {}

    def pin(self, host: str, addresses: list[IPAddress]) -> None:
        self._pinned[host] = list(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pinned.get(host)
        if not addresses:
            raise OSError(f"{host} was not checked before connecting")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        self._pinned.clear()


async def _vet(url: URL, config: UrlFetchConfig, resolver: PinnedResolver) -> None:
    host = url.raw_host or ""
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        addresses = await resolve_host(host, url.port or 0)
    if not config.allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise FetchError(f"refused {url}: {address} is {reason} ({ALLOW_HINT})")
    resolver.pin(host, addresses)


# ------------------------------------------------------------------- fetch
async def fetch_url(url: str, dest_dir: Path, config: UrlFetchConfig) -> FetchedUrl:
    """Download ``url`` into a new file in ``dest_dir``; raise :class:`FetchError`."""
    start = _parse(url)
    try:
        async with asyncio.timeout(config.timeout_s):
            return await _fetch(start, dest_dir, config)
    except TimeoutError as exc:
        raise FetchError(f"timed out after {config.timeout_s:g} s fetching {start}") from exc


async def _fetch(url: URL, dest_dir: Path, config: UrlFetchConfig) -> FetchedUrl:
    resolver = PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    current = check_url(url, config)
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # an environment proxy would connect where we did not check
        timeout=aiohttp.ClientTimeout(total=None),  # the caller's one deadline rules
        headers={"User-Agent": USER_AGENT},
    ) as session:
        for _ in range(config.max_redirects + 1):
            await _vet(current, config, resolver)
            try:
                async with session.get(current, allow_redirects=False) as response:
                    if response.status in REDIRECT_STATUSES:
                        current = _redirect_target(current, response, config)
                        continue
                    if not 200 <= response.status < 300:
                        raise FetchError(f"HTTP {response.status} from {current}")
                    length = response.content_length
                    if length is not None and length > config.max_bytes:
                        raise FetchError(f"too large: more than {config.max_bytes} bytes")
                    path = await _save(response, dest_dir, config.max_bytes)
                    return FetchedUrl(
                        path=path,
                        name=document_name(current),
                        media_type=_media_type(response),
                        final_url=str(current),
                    )
            except aiohttp.ClientError as exc:
                raise FetchError(f"could not fetch {current}: {short_reason(exc)}") from exc
    raise FetchError(f"too many redirects from {url} (more than {config.max_redirects})")


def _redirect_target(current: URL, response: aiohttp.ClientResponse, config: UrlFetchConfig) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise FetchError(f"HTTP {response.status} from {current} without a Location")
    try:
        target = current.join(URL(location))
    except ValueError as exc:
        raise FetchError(f"invalid redirect from {current} to {location!r}: {exc}") from exc
    return check_url(target, config)


async def _save(response: aiohttp.ClientResponse, dest_dir: Path, max_bytes: int) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest_dir, prefix="url-", suffix=".download")
    path = Path(name)
    try:
        received = 0
        with os.fdopen(fd, "wb") as fh:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                received += len(chunk)
                if received > max_bytes:
                    raise FetchError(f"too large: more than {max_bytes} bytes")
                fh.write(chunk)
    except BaseException:  # cancellation and timeouts too: no partial file stays behind
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


def document_name(url: URL) -> str:
    """A readable document name: host, a non-default port, and the path."""
    host = url.host or url.raw_host or ""
    if url.explicit_port is not None and not url.is_default_port():
        host = f"{host}:{url.explicit_port}"
    path = url.path if url.path != "/" else ""
    return (host + path)[:MAX_NAME_CHARS]


def _media_type(response: aiohttp.ClientResponse) -> str | None:
    # response.content_type invents application/octet-stream; None is more honest.
    header = response.headers.get("Content-Type", "")
    media_type = header.split(";", 1)[0].strip().lower()
    return media_type or None
