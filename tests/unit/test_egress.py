"""The outbound address guard (``enclave.egress``): every spelling of a refused
address is refused, at apply time and at call time; DNS is checked and pinned;
redirects are vetted; ``egress.allow`` opens exactly what it names; refusals
are audited.

No test needs the network: DNS is a fake resolver, and the HTTP side is an
``httpx.MockTransport`` (which records what would have been sent) or a real
server on 127.0.0.1 reached through a name only the fake resolver knows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from enclave import egress
from enclave.app import create_app
from enclave.apps.calls import call_operation
from enclave.apps.openapi import load_operations
from enclave.egress import (
    Caller,
    EgressGuard,
    EgressPolicy,
    EgressRefused,
    RefusedConnection,
    address_refusal,
    parse_allow_entry,
    read_host,
    url_refusal,
)
from enclave.errors import ConfigError
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings, load_settings
from enclave.testing.scripted import Script, ScriptedProvider
from tests.conftest import ADMIN_KEY
from tests.unit.test_apps_api import AppsClient, HrApi, example_spec, respond

HR_PATH = Path(__file__).parents[1] / "data" / "apps" / "hr-openapi.yaml"
PUBLIC = ipaddress.ip_address("93.184.216.34")
LOOPBACK = ipaddress.ip_address("127.0.0.1")

# Every one of these means this machine, a private network or a metadata service.
REFUSED_HOSTS = [
    "127.0.0.1",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "api.localhost",
    "0.0.0.0",
    "0",
    "2130706433",  # 127.0.0.1 as one decimal number
    "0x7f000001",  # ... as one hex number
    "0X7F000001",
    "0177.0.0.1",  # octal first part
    "0x7f.0.0.1",
    "127.1",  # short form: the last part fills the rest
    "127.0.1",
    "127.0.0.1.",  # trailing dot
    "%31%32%37.0.0.1",  # percent-encoded
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full-width digits
    "[::1]",
    "[::]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[2002:7f00:1::]",  # 6to4
    "[64:ff9b::7f00:1]",  # NAT64
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata address
    "[fe80::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "169.254.169.254",
    "2852039166",  # 169.254.169.254 as one number
    "169.254.170.2",
    "100.100.100.200",  # Alibaba metadata
    "metadata.google.internal",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
]


def never_resolve(host: str, port: int) -> Any:
    raise AssertionError(f"DNS was asked about {host}")


def fake_dns(records: dict[str, list[Any]]) -> egress.Resolver:
    async def resolve(host: str, port: int) -> list[Any]:
        if host not in records:
            raise EgressRefused(f"could not resolve {host}", host=host, reason="dns")
        return [ipaddress.ip_address(str(address)) for address in records[host]]

    return resolve


def recording(sent: list[httpx.Request]) -> Any:
    """A mock API that answers 200 and keeps every request it would have received."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    return handler


class Recorded:
    """An audit log that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, record: Any) -> None:
        self.records.append(record)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


# -- the decision, without DNS ------------------------------------------------------------------


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_every_spelling_of_a_refused_address_is_refused_without_dns(host: str) -> None:
    refusal = url_refusal(EgressPolicy(), f"http://{host}:8080/api")
    assert refusal is not None
    assert refusal.startswith("refused http://")
    assert "egress.allow" in refusal


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_every_spelling_is_refused_when_called_and_nothing_is_sent(host: str) -> None:
    sent: list[httpx.Request] = []
    audit = Recorded()
    guard = EgressGuard(audit=audit, resolve=never_resolve)  # refused before any DNS
    inner = httpx.MockTransport(recording(sent))

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=guard.transport("app-api", inner)) as client:
            await client.get(f"http://{host}:8080/api")

    try:
        run(scenario())
    except httpx.InvalidURL:  # httpx cannot even build it (0177.0.0.1, full-width digits)
        assert audit.records == []
    except RefusedConnection as exc:
        assert "egress.allow" in str(exc) or "exact address" in str(exc)
        assert [record.endpoint for record in audit.records] == ["egress:app-api"]
    else:
        pytest.fail(f"http://{host}:8080/api was not refused")
    assert sent == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", LOOPBACK),
        ("0x7f000001", LOOPBACK),
        ("0177.0.0.1", LOOPBACK),
        ("0177.0.0.01", LOOPBACK),
        ("127.1", LOOPBACK),
        ("127.0.1", LOOPBACK),
        ("0x7f.1", LOOPBACK),
        ("127.0.0.1.", LOOPBACK),
        ("0", ipaddress.ip_address("0.0.0.0")),
        ("[::ffff:127.0.0.1]", ipaddress.ip_address("::ffff:127.0.0.1")),
        ("Hr.Internal.Example.", "hr.internal.example"),
        ("1.2.3.com", "1.2.3.com"),
    ],
)
def test_hosts_are_read_as_a_resolver_reads_them(host: str, expected: object) -> None:
    assert read_host(host) == expected


@pytest.mark.parametrize("host", ["1.2.3.256", "08.0.0.1", "0x1g.0.0.1", "1.2.3.4.5", "1..2.3"])
def test_a_host_that_is_neither_an_address_nor_a_name_is_refused(host: str) -> None:
    refusal = url_refusal(EgressPolicy(), f"http://{host}/")
    assert refusal is not None and "refused" in refusal


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://1.1.1.1/",
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:93.184.216.34]/",
        "http://[64:ff9b::5db8:d822]/",  # NAT64 of a public address
        "https://hr.example.com/api",  # a name: checked when called
    ],
)
def test_public_destinations_pass(url: str) -> None:
    assert url_refusal(EgressPolicy(), url) is None


def test_scheme_and_credentials_are_refused_without_echoing_them() -> None:
    assert "scheme 'file'" in str(url_refusal(EgressPolicy(), "file:///etc/passwd"))
    refusal = str(url_refusal(EgressPolicy(), "http://admin:hunter2@example.org/"))
    assert "credentials" in refusal and "hunter2" not in refusal


# -- egress.allow ---------------------------------------------------------------------------------


def test_allow_lets_exactly_the_named_hosts_and_networks_through() -> None:
    policy = EgressPolicy.from_entries(
        ["hr.internal.example", "*.corp.example", "10.20.0.0/16", "127.0.0.1/32"]
    )
    assert url_refusal(policy, "http://127.0.0.1:8090/api") is None
    assert url_refusal(policy, "http://2130706433:8090/api") is None  # same address, other spelling
    assert url_refusal(policy, "http://[::ffff:127.0.0.1]/") is None
    assert url_refusal(policy, "http://10.20.3.4/") is None
    assert url_refusal(policy, "http://127.0.0.2/") is not None
    assert url_refusal(policy, "http://10.21.0.1/") is not None
    assert url_refusal(policy, "http://localhost/") is not None
    assert policy.allows_name("hr.internal.example")
    assert policy.allows_name("wiki.corp.example") and not policy.allows_name("corp.example")
    assert not policy.allows_name("hr.internal.example.evil.test")


def test_a_metadata_address_is_allowed_only_by_its_exact_address() -> None:
    wide = EgressPolicy.from_entries(["169.254.0.0/16", "fd00::/8"])
    assert wide.refusal(ipaddress.ip_address("169.254.1.1")) is None
    assert wide.refusal(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    assert wide.refusal(ipaddress.ip_address("fd00:ec2::254")) == "a cloud metadata address"
    exact = EgressPolicy.from_entries(["169.254.169.254"])
    assert exact.refusal(ipaddress.ip_address("169.254.169.254")) is None


def test_allow_names_local_names_explicitly() -> None:
    assert url_refusal(EgressPolicy.from_entries(["localhost"]), "http://localhost:9000/") is None


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("10.20.0.0/16", ("network", ipaddress.ip_network("10.20.0.0/16"))),
        ("127.0.0.1", ("network", ipaddress.ip_network("127.0.0.1/32"))),
        ("fd12::/48", ("network", ipaddress.ip_network("fd12::/48"))),
        ("HR.Internal.Example.", ("name", "hr.internal.example")),
        ("*.corp.example", ("suffix", ".corp.example")),
    ],
)
def test_allow_entries_parse(entry: str, parsed: tuple[str, object]) -> None:
    assert parse_allow_entry(entry) == parsed


@pytest.mark.parametrize(
    "entry", ["10.20.0.1/16", "300.1.2.3", "10.0.0.0/33", "http://x", "", "a b"]
)
def test_a_bad_allow_entry_stops_start_up_naming_it(entry: str, tmp_path: Path) -> None:
    config = tmp_path / "enclave.yaml"
    config.write_text(yaml.safe_dump({"egress": {"allow": ["10.0.0.0/8", entry]}}))
    with pytest.raises(ConfigError, match=r"line 4: field 'egress\.allow\.1'") as caught:
        load_settings(config)
    assert repr(entry) in str(caught.value) or entry == ""


def test_allow_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_EGRESS__ALLOW", '["10.20.0.0/16", "hr.internal.example"]')
    assert load_settings(None).egress.allow == ["10.20.0.0/16", "hr.internal.example"]


# -- property: encodings ------------------------------------------------------------------------

REFUSED_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
REFUSED_V6 = [
    ipaddress.ip_network(n) for n in ("::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8")
]


def address_in(networks: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(networks).flatmap(
        lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i])
    )


def number(value: int, draw_base: str) -> str:
    if draw_base == "hex":
        return f"0x{value:x}"
    if draw_base == "HEX":
        return f"0X{value:X}"
    if draw_base == "octal":
        return f"0{value:o}"
    return str(value)


@st.composite
def ipv4_spellings(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """``address`` written as dotted, decimal, hex, octal, short or mixed forms."""
    value = int(address)
    octets = [(value >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    parts_count = draw(st.sampled_from([1, 2, 3, 4]))
    if parts_count == 4:
        parts = octets
    elif parts_count == 3:
        parts = [octets[0], octets[1], value & 0xFFFF]
    elif parts_count == 2:
        parts = [octets[0], value & 0xFFFFFF]
    else:
        parts = [value]
    bases = st.sampled_from(["dec", "hex", "HEX", "octal"])
    text = ".".join(number(part, draw(bases)) for part in parts)
    if draw(st.booleans()):
        text += "."
    return text


@st.composite
def ipv6_forms_of_ipv4(
    draw: st.DrawFn,
    address: ipaddress.IPv4Address,
    forms: tuple[str, ...] = ("mapped", "mapped-hex", "compatible", "6to4", "nat64"),
) -> str:
    """``address`` inside an IPv6 form (IPv4-compatible is deprecated: never public)."""
    value = int(address)
    form = draw(st.sampled_from(forms))
    if form == "mapped":
        return f"[::ffff:{address}]"
    if form == "mapped-hex":
        return f"[{ipaddress.IPv6Address((0xFFFF << 32) | value)}]"
    if form == "compatible":  # ::0.0.0.0 and ::0.0.0.1 are :: and ::1, refused anyway
        return f"[::{address}]"
    if form == "6to4":
        return f"[{ipaddress.IPv6Address((0x2002 << 112) | (value << 80))}]"
    return f"[64:ff9b::{address}]"


@st.composite
def refused_hosts(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        address = draw(address_in(REFUSED_V4))
        spelling = draw(st.one_of(ipv4_spellings(address), ipv6_forms_of_ipv4(address)))
    else:
        v6 = draw(address_in(REFUSED_V6))
        spelling = f"[{draw(st.sampled_from([v6.compressed, v6.exploded]))}]"
    if draw(st.booleans()):
        spelling = spelling.upper()
    return spelling


@hypothesis_settings(max_examples=400, deadline=None)
@given(host=refused_hosts(), port=st.integers(1, 65535))
def test_property_every_encoding_of_a_refused_address_is_refused(host: str, port: int) -> None:
    url = f"http://{host}:{port}/x"
    assert url_refusal(EgressPolicy(), url) is not None, url
    try:  # the host as httpx reads it (httpx itself rejects some spellings, e.g. 0177.0.0.1)
        client_host = httpx.URL(url).host
    except httpx.InvalidURL:
        client_host = host
    with pytest.raises(EgressRefused):
        run(EgressGuard(resolve=never_resolve).vet("http", client_host, port, purpose="test"))


public_v4 = (
    st.integers(0x01000000, 0xDFFFFFFF)
    .map(ipaddress.IPv4Address)
    .filter(lambda address: address.is_global)
)
public_v6 = (
    st.integers(0x2400 << 112, (0x2800 << 112) - 1)
    .map(ipaddress.IPv6Address)
    .filter(lambda address: address.is_global)
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(address=public_v4, data=st.data())
def test_property_public_ipv4_passes_in_every_spelling(
    address: ipaddress.IPv4Address, data: st.DataObject
) -> None:
    assert address_refusal(address) is None
    routable = ("mapped", "mapped-hex", "6to4", "nat64")
    host = data.draw(st.one_of(ipv4_spellings(address), ipv6_forms_of_ipv4(address, routable)))
    target = read_host(host)
    assert target == address or (
        isinstance(target, ipaddress.IPv6Address) and egress.embedded_ipv4(target) == address
    )
    assert EgressPolicy().refusal(target) is None  # type: ignore[arg-type]


@hypothesis_settings(max_examples=200, deadline=None)
@given(address=public_v6)
def test_property_public_ipv6_passes(address: ipaddress.IPv6Address) -> None:
    assert url_refusal(EgressPolicy(), f"http://[{address}]/") is None


# -- DNS: every address checked, and the connection pinned ---------------------------------------


def test_a_name_resolving_to_a_refused_address_is_refused_and_audited() -> None:
    audit = Recorded()
    records: dict[str, list[Any]] = {"evil.test": [PUBLIC, "10.1.2.3"], "lo.test": [LOOPBACK]}
    guard = EgressGuard(audit=audit, resolve=fake_dns(records))
    caller = Caller(workspace="research", key_id=7, model="app/hr")
    for host, shown in (("evil.test", "10.1.2.3"), ("lo.test", "127.0.0.1")):
        with pytest.raises(EgressRefused, match=f"{host} resolves to {shown}"):
            run(guard.vet("https", host, 443, purpose="app-api", caller=caller))
    first = audit.records[0]
    assert (first.endpoint, first.outcome, first.error_code, first.status) == (
        "egress:app-api",
        "denied",
        "egress_denied",
        403,
    )
    assert (first.workspace, first.key_id, first.requested_model) == ("research", 7, "app/hr")
    assert first.location == "evil.test" and "host evil.test" in first.reasons


def test_an_allowed_name_or_network_passes_dns_checks() -> None:
    records: dict[str, list[Any]] = {"hr.internal.test": [LOOPBACK], "db.test": ["10.20.1.1"]}
    guard = EgressGuard(
        EgressPolicy.from_entries(["hr.internal.test", "10.20.0.0/16"]), resolve=fake_dns(records)
    )
    assert run(guard.vet("http", "hr.internal.test", 80, purpose="t")) == [LOOPBACK]
    assert run(guard.vet("http", "db.test", 80, purpose="t")) == [ipaddress.ip_address("10.20.1.1")]


def test_the_request_goes_to_the_vetted_address_even_if_dns_changes_its_mind() -> None:
    answers = iter([[PUBLIC], [LOOPBACK]])  # a rebinding resolver

    async def rebinding(host: str, port: int) -> list[Any]:
        return next(answers)

    sent: list[httpx.Request] = []
    inner = httpx.MockTransport(recording(sent))
    guard = EgressGuard(resolve=rebinding)

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=guard.transport("app-api", inner)) as client:
            return await client.get("https://api.test/v1/things?q=1")

    assert run(scenario()).status_code == 200
    [request] = sent
    assert request.url.host == "93.184.216.34"  # connected to what was checked
    assert request.url.path == "/v1/things" and request.url.query == b"q=1"
    assert request.headers["host"] == "api.test"  # the API still sees its own name
    assert request.extensions["sni_hostname"] == "api.test"  # and TLS checks its certificate


def test_a_real_connection_is_pinned_to_the_vetted_address() -> None:
    """``pinned.test`` exists only in the fake DNS: a response proves the pin was used."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["Host"])
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    guard = EgressGuard(
        EgressPolicy.from_entries(["127.0.0.1/32"]), resolve=fake_dns({"pinned.test": [LOOPBACK]})
    )

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(transport=guard.transport("app-api")) as client:
            return await client.get(f"http://pinned.test:{port}/x")

    try:
        response = run(scenario())
    finally:
        server.shutdown()
        server.server_close()
    assert response.json() == {"ok": True}
    assert seen == [f"pinned.test:{port}"]


def test_a_redirect_to_loopback_is_refused_even_when_the_client_follows_redirects() -> None:
    sent: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://127.1:8080/admin"})

    audit = Recorded()
    guard = EgressGuard(audit=audit, resolve=fake_dns({"public.test": [PUBLIC]}))
    transport = guard.transport("app-api", httpx.MockTransport(api))

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
            await client.get("http://public.test/start")

    with pytest.raises(RefusedConnection, match=r"127\.0\.0\.1 is a loopback address"):
        run(scenario())
    assert sent == ["http://93.184.216.34/start"]
    assert [record.location for record in audit.records] == ["127.0.0.1"]


# -- app API calls ---------------------------------------------------------------------------------


def test_an_app_call_to_a_refused_address_is_an_error_result_and_audited() -> None:
    operations = {
        op.tool_name: op for op in load_operations(yaml.safe_load(HR_PATH.read_text()), "hr")
    }
    audit = Recorded()
    sent: list[httpx.Request] = []
    guard = EgressGuard(audit=audit, resolve=fake_dns({"hr.test": [LOOPBACK]}))
    inner = httpx.MockTransport(recording(sent))

    async def scenario() -> Any:
        async with httpx.AsyncClient(transport=guard.transport("app-api", inner)) as client:
            return await call_operation(
                operations["listVacancies"],
                {},
                base_url="http://hr.test/api?token=query-secret-123",
                headers={"Authorization": "Bearer header-secret-456"},
                timeout_s=5,
                max_bytes=64 * 1024,
                client=client,
                caller=Caller(workspace="default", key_id=3, model="app/hr-assistant"),
            )

    result = run(scenario())
    assert sent == []
    assert result.status is None and not result.ok
    assert result.error.startswith("refused http://hr.test/api/vacancies: hr.test resolves to")
    assert "egress.allow" in result.error
    [record] = audit.records
    assert (record.endpoint, record.workspace, record.key_id) == ("egress:app-api", "default", 3)
    text = json.dumps([result.error, record.reasons, record.location])
    assert "query-secret-123" not in text and "header-secret-456" not in text


# -- through the server: apply time and call time ------------------------------------------------


@pytest.fixture
def make_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make_apps(allow=[...], dns={...})``: the server with an HR API behind the real guard."""
    monkeypatch.setenv("HR_TOKEN", "hr-secret-token-value")
    clients: list[TestClient] = []

    def make(allow: list[str] | None = None, dns: dict[str, list[Any]] | None = None) -> AppsClient:
        monkeypatch.setattr(egress, "resolve_host", fake_dns(dns or {}))
        settings = Settings(
            home=tmp_path / f"home{len(clients)}",
            admin_key=ADMIN_KEY,
            workspaces=[{"name": "default"}],
            apps={"secret_env": ["HR_TOKEN"], "tool_threshold": 0.45},
            egress={"allow": allow or []},
        )
        settings.knowledge.embedding_model = "scripted-words"
        provider = ScriptedProvider(script=Script(respond=respond))
        app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
        api = HrApi()
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        services = app.state.services
        # The server's own guard (its policy and audit log), with the mock API behind it.
        services.app_runner.http = httpx.AsyncClient(
            transport=services.egress.transport("app-api", httpx.MockTransport(api))
        )
        return AppsClient(client, provider, api)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8090",
        "localhost",
        "0.0.0.0",
        "2130706433",
        "0x7f000001",
        "127.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "LOCALHOST.",
        "0177.0.0.1",
        "169.254.169.254",
    ],
)
def test_apply_refuses_an_app_whose_api_is_a_refused_address(make_apps: Any, host: str) -> None:
    apps = make_apps()
    spec = example_spec()
    spec["spec"]["apis"][0]["url"] = f"http://{host}/api"
    answer = apps.apply(spec)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("spec.apis[0].url: refused http://")
    assert "egress.allow" in message
    assert apps.client.get("/api/apps/hr-assistant", headers=apps.auth()).status_code == 404


def test_apply_accepts_a_loopback_api_that_egress_allow_lists(make_apps: Any) -> None:
    apps = make_apps(allow=["127.0.0.1/32"])
    spec = example_spec()
    spec["spec"]["apis"][0]["url"] = "http://127.0.0.1:8090/api"
    assert apps.apply(spec).status_code == 200
    spec["spec"]["apis"][0]["url"] = "http://127.0.0.2:8090/api"  # not the allowed address
    assert apps.apply(spec).status_code == 400


def test_a_drafts_api_url_is_checked_too(make_apps: Any) -> None:
    apps = make_apps()
    spec = example_spec()
    spec["spec"]["apis"][0]["url"] = "http://127.0.0.1:9/hr"
    answer = apps.client.post("/api/apps/drafts", json={"spec": spec}, headers=apps.auth())
    assert answer.status_code == 400 and "egress.allow" in answer.text


def test_an_app_whose_api_name_resolves_to_loopback_never_calls_it(make_apps: Any) -> None:
    apps = make_apps(dns={"hr.test": [LOOPBACK]})
    assert apps.apply(example_spec()).status_code == 200  # a name: only DNS tells
    answer = apps.chat("Which vacancies are open?")
    assert answer.status_code == 200, answer.text
    [call] = answer.json()["app"]["tool_calls"]
    assert call["operation_id"] == "listVacancies"
    assert apps.api.requests == []
    denied = [entry for entry in apps.audit() if entry["endpoint"] == "egress:app-api"]
    assert len(denied) == 1
    entry = denied[0]
    assert (entry["outcome"], entry["error_code"], entry["location"]) == (
        "denied",
        "egress_denied",
        "hr.test",
    )
    assert entry["workspace"] == "default" and entry["requested_model"] == "app/hr-assistant"
    assert "hr-secret-token-value" not in json.dumps(apps.audit())


def test_egress_allow_lets_the_same_app_call_its_internal_api(make_apps: Any) -> None:
    apps = make_apps(allow=["hr.test"], dns={"hr.test": [LOOPBACK]})
    apps.apply(example_spec())
    answer = apps.chat("Which vacancies are open?")
    assert answer.status_code == 200, answer.text
    [sent] = apps.api.requests
    assert sent.url.host == "127.0.0.1" and sent.headers["host"] == "hr.test"
    assert "Welder" in answer.json()["choices"][0]["message"]["content"]
    assert not [e for e in apps.audit() if e["endpoint"].startswith("egress:")]
