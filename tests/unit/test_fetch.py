"""URL fetching: the SSRF guard refuses what it must, and real fetches stay bounded.

Every server here is a real aiohttp server on 127.0.0.1, reached through a
guard whose ``egress.allow`` lists 127.0.0.1/32 (:func:`loopback_guard`) or
through the deprecated ``allow_private``. Where a test needs a *public* host,
DNS is faked (``enclave.egress.resolve_host``) and the vetted public address is
routed to the local server, so nothing ever leaves the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from enclave import egress
from enclave.egress import EgressGuard, EgressPolicy
from enclave.knowledge import fetch
from enclave.knowledge.fetch import FetchError, PinnedResolver, address_refusal, fetch_url
from enclave.settings import UrlFetchConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_IP = ipaddress.ip_address("93.184.216.34")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def config(**overrides: Any) -> UrlFetchConfig:
    return UrlFetchConfig(**{"timeout_s": 5.0, **overrides})


def loopback_guard() -> EgressGuard:
    """The guard of a server whose config says ``egress: {allow: [127.0.0.1/32]}``."""
    return EgressGuard(EgressPolicy.from_entries(["127.0.0.1/32"]))


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def text(body: str, **kwargs: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, **kwargs)

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


def counting(hits: list[str], inner: Handler) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return await inner(request)

    return handler


def refusal(url: str, dest: Path, **overrides: Any) -> str:
    with pytest.raises(FetchError) as caught:
        run(fetch_url(url, dest, config(**overrides)))
    assert not dest.exists() or list(dest.iterdir()) == [], "a file was left behind"
    return str(caught.value)


def loopback_redirect(path: str) -> Handler:
    """Redirect to ``path`` on 127.0.0.1 at this server's own port."""

    async def handler(request: web.Request) -> web.StreamResponse:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        return web.Response(status=302, headers={"Location": f"http://127.0.0.1:{port}{path}"})

    return handler


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Fake DNS for ``*.test`` hosts; a vetted PUBLIC_IP is routed to 127.0.0.1."""
    records: dict[str, list[Any]] = {}
    real_resolve = egress.resolve_host
    real_pinned = PinnedResolver.resolve

    async def fake_resolve(host: str, port: int) -> list[Any]:
        if host in records:
            return records[host]
        return await real_resolve(host, port)

    async def routed(self: PinnedResolver, host: str, port: int = 0, family: Any = 0) -> Any:
        results = await real_pinned(self, host, port, family)
        for result in results:
            if result["host"] == str(PUBLIC_IP):
                result["host"] = "127.0.0.1"
        return results

    monkeypatch.setattr(egress, "resolve_host", fake_resolve)
    monkeypatch.setattr(PinnedResolver, "resolve", routed)
    return records


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is a loopback address"),
        ("http://localhost/", "localhost is a name for this machine"),
        ("http://LOCALHOST./", "localhost is a name for this machine"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("http://169.254.1.1/", "169.254.1.1 is a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://192.168.1.1/", "192.168.1.1 is a private address"),
        ("http://0.0.0.0/", "0.0.0.0 is the unspecified address"),
        ("http://[::]/", ":: is the unspecified address"),
        ("http://[::ffff:127.0.0.1]/", "is a loopback address in IPv6 form"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),  # 127.0.0.1 as one number
        ("http://0x7f000001/", "127.0.0.1 is a loopback address"),
        ("http://0177.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://127.1/", "127.0.0.1 is a loopback address"),
    ],
)
def test_private_destinations_are_refused(url: str, reason: str, tmp_path: Path) -> None:
    message = refusal(url, tmp_path)
    assert message.startswith("refused http://")
    assert reason in message
    assert "in egress.allow" in message or "exact address" in message


def test_refusal_message_names_the_url(tmp_path: Path) -> None:
    assert refusal("http://127.0.0.1:8080/x", tmp_path) == (
        "refused http://127.0.0.1:8080/x: 127.0.0.1 is a loopback address "
        "(an admin can allow it in egress.allow)"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///etc/passwd", "refused file:///etc/passwd: the scheme 'file' is not allowed"),
        ("ftp://example.org/pub/x", "the scheme 'ftp' is not allowed"),
        ("gopher://example.org/", "the scheme 'gopher' is not allowed"),
    ],
)
def test_other_schemes_are_refused(url: str, expected: str, tmp_path: Path) -> None:
    assert expected in refusal(url, tmp_path)


def test_https_only_config_refuses_http(tmp_path: Path) -> None:
    message = refusal("http://example.org/", tmp_path, schemes=["https"])
    assert (
        message == "refused http://example.org/: the scheme 'http' is not allowed (allowed: https)"
    )


def test_credentials_in_the_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    message = refusal("http://admin:hunter2@example.org/", tmp_path)
    assert "credentials" in message
    assert "hunter2" not in message


def test_relative_url_is_invalid(tmp_path: Path) -> None:
    assert refusal("/etc/passwd", tmp_path).startswith("invalid URL")


def test_a_refused_loopback_server_is_never_contacted(tmp_path: Path) -> None:
    hits: list[str] = []

    async def scenario() -> None:
        async with serve({"/": counting(hits, text("secret"))}) as base:
            with pytest.raises(FetchError, match="loopback"):
                await fetch_url(base + "/", tmp_path, config())

    run(scenario())
    assert hits == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("::ffff:10.0.0.1", "a private address in IPv6 form"),
        ("2002:7f00:1::", "a loopback address in IPv6 form"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address in IPv6 form"),  # NAT64 of IMDS
        ("64:ff9b::a9fe:101", "a link-local address in IPv6 form"),  # NAT64 of 169.254.1.1
    ],
)
def test_address_refusal(address: str, expected: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == expected


def test_a_host_with_any_private_address_is_refused(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["mixed.test"] = [PUBLIC_IP, ipaddress.ip_address("10.1.2.3")]
    message = refusal("http://mixed.test/", tmp_path)
    assert "mixed.test resolves to 10.1.2.3, a private address" in message


# ------------------------------------------------------------- real fetches
def test_fetch_writes_the_body_and_names_the_document(tmp_path: Path) -> None:
    page = "<html><head><title>Guide</title></head><body><h1>Guide</h1></body></html>"

    async def scenario() -> tuple[fetch.FetchedUrl, str]:
        async with serve({"/docs/guide.html": text(page, content_type="text/html")}) as base:
            result = await fetch_url(
                base + "/docs/guide.html", tmp_path, config(), loopback_guard()
            )
            return result, base

    result, base = run(scenario())
    port = base.rsplit(":", 1)[1]
    assert result.path.parent == tmp_path
    assert result.path.read_text() == page
    assert result.name == f"127.0.0.1:{port}/docs/guide.html"
    assert result.media_type == "text/html"
    assert result.final_url == base + "/docs/guide.html"


def test_connection_goes_to_the_vetted_address_not_a_fresh_lookup(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    # "pinned.test" exists only in the fake DNS: the system resolver would fail,
    # so a successful fetch proves aiohttp connected to the address we checked.
    public_dns["pinned.test"] = [ipaddress.ip_address("127.0.0.1")]

    async def scenario() -> fetch.FetchedUrl:
        async with serve({"/": text("pinned body")}) as base:
            port = base.rsplit(":", 1)[1]
            url = f"http://pinned.test:{port}/"
            return await fetch_url(url, tmp_path, config(), loopback_guard())

    result = run(scenario())
    assert result.path.read_text() == "pinned body"
    assert result.name.startswith("pinned.test:")


def test_pinned_resolver_knows_only_vetted_hosts() -> None:
    async def scenario() -> None:
        resolver = PinnedResolver()
        resolver.pin("a.test", [PUBLIC_IP])
        (answer,) = await resolver.resolve("a.test", 443)
        assert (answer["host"], answer["port"], answer["hostname"]) == (
            "93.184.216.34",
            443,
            "a.test",
        )
        with pytest.raises(OSError, match="not checked"):
            await resolver.resolve("b.test", 443)

    run(scenario())


def test_body_over_the_content_length_cap_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serve({"/big": text("x" * 4096)}) as base:
            await fetch_url(base + "/big", tmp_path, config(max_bytes=1024), loopback_guard())

    with pytest.raises(FetchError, match=r"^too large: more than 1024 bytes$"):
        run(scenario())
    assert list(tmp_path.iterdir()) == []


def test_streamed_body_over_the_cap_is_cut_off_and_removed(tmp_path: Path) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length to check up front
        await response.prepare(request)
        for _ in range(8):
            await response.write(b"y" * 1024)
        await response.write_eof()
        return response

    async def scenario() -> None:
        async with serve({"/stream": chunked}) as base:
            await fetch_url(base + "/stream", tmp_path, config(max_bytes=2048), loopback_guard())

    with pytest.raises(FetchError, match=r"^too large: more than 2048 bytes$"):
        run(scenario())
    assert list(tmp_path.iterdir()) == []


def test_slow_server_times_out(tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def scenario() -> None:
        async with serve({"/slow": slow}) as base:
            await fetch_url(base + "/slow", tmp_path, config(timeout_s=0.5), loopback_guard())

    started = time.perf_counter()
    with pytest.raises(FetchError, match=r"^timed out after 0.5 s fetching http://127\.0\.0\.1"):
        run(scenario())
    assert time.perf_counter() - started < 3


def test_timeout_mid_body_leaves_no_partial_file(tmp_path: Path) -> None:
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b"z" * 1000)
        await asyncio.sleep(5)
        return response

    async def scenario() -> None:
        async with serve({"/stall": stalls}) as base:
            await fetch_url(base + "/stall", tmp_path, config(timeout_s=0.5), loopback_guard())

    with pytest.raises(FetchError, match="timed out"):
        run(scenario())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 500])
def test_non_2xx_is_an_error(status: int, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="nope")

    async def scenario() -> None:
        async with serve({"/missing": handler}) as base:
            await fetch_url(base + "/missing", tmp_path, config(), loopback_guard())

    with pytest.raises(FetchError, match=rf"^HTTP {status} from http://127\.0\.0\.1:\d+/missing$"):
        run(scenario())
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- redirects
def test_redirect_chain_is_followed(tmp_path: Path) -> None:
    routes = {
        "/a": redirect("/b", 301),
        "/b": redirect("c.txt", 307),  # relative to /b
        "/c.txt": text("arrived", content_type="text/plain"),
    }

    async def scenario() -> tuple[fetch.FetchedUrl, str]:
        async with serve(routes) as base:
            return await fetch_url(base + "/a", tmp_path, config(), loopback_guard()), base

    result, base = run(scenario())
    assert result.path.read_text() == "arrived"
    assert result.final_url == base + "/c.txt"
    assert result.name.endswith("/c.txt")
    assert result.media_type == "text/plain"


def test_too_many_redirects(tmp_path: Path) -> None:
    routes = {"/a": redirect("/b"), "/b": redirect("/c"), "/c": text("end")}

    async def scenario() -> None:
        async with serve(routes) as base:
            await fetch_url(base + "/a", tmp_path, config(max_redirects=1), loopback_guard())

    with pytest.raises(FetchError, match=r"^too many redirects from .* \(more than 1\)$"):
        run(scenario())


def test_redirect_from_a_public_host_to_loopback_is_refused(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["public.test"] = [PUBLIC_IP]
    hits: list[str] = []
    routes = {
        "/start": counting(hits, loopback_redirect("/secret")),
        "/secret": counting(hits, text("internal admin page")),
    }

    async def scenario() -> str:
        async with serve(routes) as base:
            port = base.rsplit(":", 1)[1]
            with pytest.raises(FetchError) as caught:
                await fetch_url(f"http://public.test:{port}/start", tmp_path, config())
            return str(caught.value)

    message = run(scenario())
    assert message.startswith("refused http://127.0.0.1:")
    assert "/secret: 127.0.0.1 is a loopback address" in message
    assert hits == ["/start"], "the loopback target must never be requested"
    assert list(tmp_path.iterdir()) == []


def test_same_redirect_is_followed_when_private_addresses_are_allowed(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["public.test"] = [PUBLIC_IP]
    routes = {"/start": loopback_redirect("/secret"), "/secret": text("internal page")}

    async def scenario() -> fetch.FetchedUrl:
        async with serve(routes) as base:
            port = base.rsplit(":", 1)[1]
            url = f"http://public.test:{port}/start"
            return await fetch_url(url, tmp_path, config(), loopback_guard())

    assert run(scenario()).path.read_text() == "internal page"


def test_redirect_to_another_scheme_is_refused(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["public.test"] = [PUBLIC_IP]

    async def scenario() -> None:
        async with serve({"/go": redirect("file:///etc/passwd")}) as base:
            port = base.rsplit(":", 1)[1]
            await fetch_url(f"http://public.test:{port}/go", tmp_path, config())

    with pytest.raises(FetchError, match="the scheme 'file' is not allowed"):
        run(scenario())


def test_public_host_is_fetched_when_private_addresses_are_refused(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["public.test"] = [PUBLIC_IP]

    async def scenario() -> fetch.FetchedUrl:
        async with serve({"/doc.md": text("# Hello", content_type="text/markdown")}) as base:
            port = base.rsplit(":", 1)[1]
            return await fetch_url(f"http://public.test:{port}/doc.md", tmp_path, config())

    result = run(scenario())
    assert result.path.read_text() == "# Hello"
    assert result.media_type == "text/markdown"


# ------------------------------------------------------- the outbound guard
class Recorded:
    """An audit log that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, record: Any) -> None:
        self.records.append(record)


def test_a_name_resolving_to_loopback_is_refused_and_audited(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["rebound.test"] = [ipaddress.ip_address("127.0.0.1")]
    hits: list[str] = []
    audit = Recorded()

    async def scenario() -> str:
        async with serve({"/": counting(hits, text("internal"))}) as base:
            port = base.rsplit(":", 1)[1]
            with pytest.raises(FetchError) as caught:
                await fetch_url(
                    f"http://rebound.test:{port}/",
                    tmp_path,
                    config(),
                    EgressGuard(audit=audit),
                    caller=egress.Caller(workspace="research"),
                )
            return str(caught.value)

    message = run(scenario())
    assert "rebound.test resolves to 127.0.0.1, a loopback address" in message
    assert hits == []
    (record,) = audit.records
    assert (record.endpoint, record.outcome, record.error_code) == (
        "egress:knowledge-url",
        "denied",
        "egress_denied",
    )
    assert (record.workspace, record.location) == ("research", "rebound.test")
    assert "host rebound.test" in record.reasons


def test_egress_allow_by_name_lets_an_internal_host_through(
    tmp_path: Path, public_dns: dict[str, list[Any]]
) -> None:
    public_dns["wiki.internal.test"] = [ipaddress.ip_address("127.0.0.1")]
    guard = EgressGuard(EgressPolicy.from_entries(["wiki.internal.test"]))

    async def scenario() -> fetch.FetchedUrl:
        async with serve({"/page": text("internal wiki")}) as base:
            port = base.rsplit(":", 1)[1]
            return await fetch_url(
                f"http://wiki.internal.test:{port}/page", tmp_path, config(), guard
            )

    assert run(scenario()).path.read_text() == "internal wiki"


def test_deprecated_allow_private_still_allows_loopback_but_never_metadata(
    tmp_path: Path,
) -> None:
    async def scenario() -> fetch.FetchedUrl:
        async with serve({"/doc": text("local doc")}) as base:
            return await fetch_url(base + "/doc", tmp_path, config(allow_private=True))

    assert run(scenario()).path.read_text() == "local doc"
    message = refusal(
        "http://169.254.169.254/latest/meta-data/", tmp_path / "refused", allow_private=True
    )
    assert "169.254.169.254 is a cloud metadata address" in message
