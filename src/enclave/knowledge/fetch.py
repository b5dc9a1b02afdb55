"""Download one URL into a file, behind the outbound address guard (:mod:`enclave.egress`).

A user who may add URLs to a knowledge base must not be able to make the server
read its own loopback services, the cloud metadata endpoint or the private
network. So before every request, the first and each redirect hop:

1. the scheme must be http or https (and allowed by ``knowledge.url_fetch``),
   and the URL may carry no credentials;
2. the :class:`~enclave.egress.EgressGuard` checks the host: a literal address
   in any spelling, or every address the name resolves to, must be public or
   allowed by ``egress.allow`` (the deprecated ``allow_private`` still lets
   every non-public address but the metadata ones through); a refusal is
   audited as ``egress:knowledge-url``;
3. the connection goes to exactly the addresses that were checked: aiohttp
   resolves through :class:`~enclave.egress.PinnedResolver`, which only knows
   vetted answers, so a DNS server cannot answer differently the second time
   (DNS rebinding).

Redirects are followed by hand for that reason. The whole fetch has one
deadline, the body is streamed to disk and cut off past ``max_bytes``, and a
partial file never outlives a failure. Every failure is a :class:`FetchError`
whose message can be shown to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from enclave.egress import (
    Caller,
    EgressGuard,
    EgressRefused,
    PinnedResolver,
    address_refusal,
    shown_url,
)
from enclave.errors import InvalidRequest
from enclave.knowledge.extract import short_reason
from enclave.settings import UrlFetchConfig

__all__ = ["FetchError", "FetchedUrl", "PinnedResolver", "address_refusal", "fetch_url"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
MAX_NAME_CHARS = 255
PURPOSE = "knowledge-url"
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


async def _vet(
    url: URL, guard: EgressGuard, resolver: PinnedResolver, caller: Caller | None
) -> None:
    host = url.raw_host or ""
    where = shown_url(url.scheme, host, url.explicit_port, url.raw_path)
    try:
        addresses = await guard.vet(
            url.scheme, host, url.port or 0, purpose=PURPOSE, caller=caller, where=where
        )
    except EgressRefused as exc:
        raise FetchError(str(exc)) from None
    resolver.pin(host, addresses)


# ------------------------------------------------------------------- fetch
async def fetch_url(
    url: str,
    dest_dir: Path,
    config: UrlFetchConfig,
    guard: EgressGuard | None = None,
    *,
    caller: Caller | None = None,
) -> FetchedUrl:
    """Download ``url`` into a new file in ``dest_dir``; raise :class:`FetchError`.

    ``guard`` decides where the server may connect (default: public addresses
    only, nothing audited); ``caller`` names whose fetch it is in the audit log.
    """
    start = _parse(url)
    guard = guard or EgressGuard()
    if config.allow_private:
        guard = guard.allowing_private()
    try:
        async with asyncio.timeout(config.timeout_s):
            return await _fetch(start, dest_dir, config, guard, caller)
    except TimeoutError as exc:
        raise FetchError(f"timed out after {config.timeout_s:g} s fetching {start}") from exc


async def _fetch(
    url: URL, dest_dir: Path, config: UrlFetchConfig, guard: EgressGuard, caller: Caller | None
) -> FetchedUrl:
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
            await _vet(current, guard, resolver, caller)
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
