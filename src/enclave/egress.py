"""The outbound address guard: may the server itself connect to this URL?

Every URL the server fetches on someone's behalf (a knowledge URL and each of
its redirects, an app's API call, an MCP server later) goes through one
:class:`EgressGuard`, so a key that may add a URL or deploy an app cannot make
the server read its own loopback services, the cloud metadata endpoint or the
private network (server-side request forgery).

A URL passes when:

1. its scheme is http or https and it carries no credentials;
2. its host, read as the HTTP client reads it, is either an address literal,
   in any spelling an address resolver accepts (``2130706433``,
   ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
   full-width digits), or a name, which is resolved; names such as
   ``localhost``, ``*.localhost`` and ``metadata.google.internal`` are
   refused without asking DNS;
3. *every* address is public: not loopback, private, link-local, shared
   (CGNAT), multicast, reserved, unspecified or a cloud metadata address, also
   when wrapped in an IPv6 form (IPv4-mapped and -compatible, 6to4, Teredo,
   NAT64), unless ``egress.allow`` names the host or a network holding the
   address. A metadata address is allowed only by its exact address (``/32``
   or ``/128``), never by a wider network;
4. the connection goes to exactly the addresses that were checked: httpx
   through :class:`GuardedTransport` (the request is sent to the vetted
   address, with the original ``Host`` header and TLS server name), aiohttp
   through :class:`PinnedResolver`, so a DNS server cannot answer differently
   the second time (DNS rebinding).

Redirects are never followed blindly: :class:`GuardedTransport` vets every
request it sends, and the knowledge fetcher vets each hop before following it.

A refusal is an :class:`EgressRefused` whose message names the host and the
reason and can be shown to the user, never the URL's credentials or query. When
the guard has an audit log, each refusal also appends an entry (endpoint
``egress:<purpose>``, outcome ``denied``, error code ``egress_denied``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from enclave.errors import InvalidRequest
from enclave.gateway.audit import AuditRecord

if TYPE_CHECKING:
    from enclave.settings import EgressConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

ALLOW_HINT = "an admin can allow it in egress.allow"
METADATA_HINT = "egress.allow can allow it only by its exact address"
SCHEMES = ("http", "https")
# Addresses that answer with cloud credentials: AWS, GCP, Azure, Oracle, DigitalOcean
# (169.254.169.254), AWS ECS task metadata and time sync, AWS IPv6 IMDS, Alibaba.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.169.123",
        "fd00:ec2::254",
        "fd00:ec2::23",
        "100.100.100.200",
    )
)
# Names that mean this machine or a metadata service, whatever DNS says.
LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata.google.internal",
        "metadata.goog",
    }
)
SHARED_NETWORK = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, any embedding
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Dots that IDNA maps to "." (ideographic, full-width and half-width full stops).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_DECIMAL = re.compile(r"[0-9]+")
_OCTAL = re.compile(r"[0-7]+")
_HEX = re.compile(r"[0-9a-f]*")
_NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


class EgressRefused(InvalidRequest):
    """The server may not connect there. ``str(exc)`` is safe to show and to audit."""

    def __init__(self, message: str, *, host: str, reason: str) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class RefusedConnection(httpx.ConnectError):
    """What :class:`GuardedTransport` raises for a refused request: an httpx error."""

    def __init__(self, refusal: EgressRefused, *, request: httpx.Request) -> None:
        super().__init__(str(refusal), request=request)
        self.refusal = refusal


class AuditSink(Protocol):
    def append(self, record: AuditRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """On whose behalf a connection is made, for the audit entry of a refusal."""

    workspace: str = ""
    key_id: int | None = None
    model: str = ""  # the app (``app/<name>``), when there is one


# Request extension that carries the Caller through httpx to GuardedTransport.
CALLER_EXTENSION = "enclave.egress_caller"


# ------------------------------------------------------------------ addresses
def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (``"a loopback address"``), or None."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
            if address in METADATA_ADDRESSES:
                return "a cloud metadata address"
        embedded = embedded_ipv4(address)
        if embedded is not None and (reason := address_refusal(embedded)):
            return f"{reason} in IPv6 form"
        if embedded is not None and (address.ipv4_mapped or address in NAT64_PREFIX):
            return None  # reaches the public IPv4 address it carries
        if address in NAT64_LOCAL:
            return "a local-use NAT64 address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED_NETWORK:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "not a public address"
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in IPV4_COMPATIBLE and int(address) > 1:  # ::a.b.c.d, not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _ipv4_part(part: str) -> int:
    """One dotted part as ``inet_aton`` and browsers read it: 0x.. hex, 0.. octal, decimal."""
    if part[:2] == "0x":
        digits, pattern, base = part[2:], _HEX, 16
    elif len(part) > 1 and part[0] == "0":
        digits, pattern, base = part[1:], _OCTAL, 8
    else:
        digits, pattern, base = part, _DECIMAL, 10
    if not pattern.fullmatch(digits):
        raise ValueError(f"{part!r} is not a number")
    return int(digits, base) if digits else 0


def _ends_in_number(part: str) -> bool:
    return bool(_DECIMAL.fullmatch(part)) or (part[:2] == "0x" and bool(_HEX.fullmatch(part[2:])))


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` as an IPv4 address in any spelling a resolver accepts, or None for a name.

    ``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.0.0.1.``
    are all 127.0.0.1 (the WHATWG URL rules, which agree with ``inet_aton``).
    A host whose last label is a number but which is no valid address raises
    ValueError: it is neither a name nor an address.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _ends_in_number(parts[-1]):
        return None
    if len(parts) > 4 or "" in parts:
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    numbers = [_ipv4_part(part) for part in parts]
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def read_host(host: str) -> IPAddress | str:
    """A URL's host as an address (any spelling) or a normalised name (lower case, no dot).

    Raises :class:`ValueError` for a host that is neither.
    """
    text = unicodedata.normalize("NFKC", unquote(host)).translate(_DOTS).strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError("the URL has no host")
    if ":" in text:
        return ipaddress.IPv6Address(text)  # ValueError when it is not one
    address = parse_ipv4(text)
    if address is not None:
        return address
    name = text[:-1] if text.endswith(".") else text
    if not name or not _NAME.fullmatch(name) or name.startswith("*."):
        raise ValueError(f"{host!r} is not a valid host name")
    return name


def local_name_refusal(name: str) -> str | None:
    """Why ``name`` means this machine or a metadata service whatever DNS answers, or None."""
    if name.startswith("metadata."):
        return "a cloud metadata name" if name in LOCAL_NAMES else None
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return "a name for this machine"
    return None


# --------------------------------------------------------------------- policy
@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which destinations are allowed beyond the public internet (``egress.allow``).

    ``names`` are exact host names, ``suffixes`` come from ``*.example.org``
    entries (any name below it), ``networks`` from CIDRs and addresses.
    ``allow_private`` lets every non-public address through except metadata
    ones (the deprecated ``knowledge.url_fetch.allow_private``).
    """

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, allow_private: bool = False) -> EgressPolicy:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            kind, value = parse_allow_entry(entry)
            if kind == "network":
                assert not isinstance(value, str)
                networks.append(value)
            elif kind == "suffix":
                suffixes.append(str(value))
            else:
                names.add(str(value))
        return cls(frozenset(names), tuple(suffixes), tuple(networks), allow_private)

    @classmethod
    def from_config(cls, config: EgressConfig) -> EgressPolicy:
        return cls.from_entries(config.allow)

    def allowing_private(self) -> EgressPolicy:
        return EgressPolicy(self.names, self.suffixes, self.networks, allow_private=True)

    def allows_name(self, name: str) -> bool:
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def refusal(self, address: IPAddress) -> str | None:
        """Why the server may not connect to ``address`` under this policy, or None."""
        reason = address_refusal(address)
        if reason is None:
            return None
        plain = _without_scope(address)
        candidates = [plain]
        if isinstance(plain, ipaddress.IPv6Address) and (inner := embedded_ipv4(plain)):
            candidates.append(inner)
        for candidate in candidates:
            exact = candidate.max_prefixlen
            for network in self.networks:
                if network.version != candidate.version or candidate not in network:
                    continue
                if candidate not in METADATA_ADDRESSES or network.prefixlen == exact:
                    return None
        if self.allow_private and not reason.startswith("a cloud metadata address"):
            return None
        return reason


def parse_allow_entry(entry: str) -> tuple[str, IPNetwork | str]:
    """``("network", 10.0.0.0/8)``, ``("name", "hr.internal")`` or ``("suffix", ".corp")``.

    Raises ValueError with a readable reason for anything else.
    """
    text = entry.strip().lower()
    if not text:
        raise ValueError("an empty entry")
    name = text[:-1] if text.endswith(".") else text
    try:
        return "network", ipaddress.ip_network(text.strip("[]"), strict=True)
    except ValueError as exc:
        if "/" in text or ":" in text or _ends_in_number(name.rsplit(".", 1)[-1]):
            raise ValueError(f"{entry!r} is not a valid address or CIDR ({exc})") from None
    if not _NAME.fullmatch(name):
        raise ValueError(f"{entry!r} is neither a host name, '*.domain', an address nor a CIDR")
    if name.startswith("*."):
        return "suffix", name[1:]
    return "name", name


def _without_scope(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
    return address


# ------------------------------------------------------------------- decisions
def shown_url(scheme: str, host: str, port: int | None, path: str) -> str:
    """A URL fit for messages and the audit log: no credentials, query or fragment."""
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{path}"


def _refuse(where: str, host: str, reason: str) -> EgressRefused:
    hint = METADATA_HINT if "cloud metadata" in reason else ALLOW_HINT
    return EgressRefused(f"refused {where}: {reason} ({hint})", host=host, reason=reason)


def check_target(
    policy: EgressPolicy, scheme: str, host: str, *, has_credentials: bool = False, where: str = ""
) -> IPAddress | str:
    """The checks that need no DNS: scheme, credentials, host spelling, literal addresses
    and local names. Returns the address, or the name still to be resolved.
    """
    where = where or host
    if scheme.lower() not in SCHEMES:
        raise EgressRefused(
            f"refused {where}: the scheme {scheme!r} is not allowed (only http and https)",
            host=host,
            reason="scheme",
        )
    if has_credentials:
        raise EgressRefused(
            f"refused {where}: a URL with credentials (user:password@) is not allowed",
            host=host,
            reason="credentials",
        )
    try:
        target = read_host(host)
    except ValueError as exc:
        raise EgressRefused(f"refused {where}: {exc}", host=host, reason="invalid host") from None
    if isinstance(target, str):
        reason = local_name_refusal(target)
        private_ok = policy.allow_private and reason != "a cloud metadata name"
        if reason and not policy.allows_name(target) and not private_ok:
            raise _refuse(where, target, f"{target} is {reason}")
        return target
    reason = policy.refusal(target)
    if reason:
        raise _refuse(where, str(target), f"{_spelled(target)} is {reason}")
    return target


def _spelled(address: IPAddress) -> str:
    """An address for messages, with the IPv4 address an IPv6 form carries."""
    plain = _without_scope(address)
    if isinstance(plain, ipaddress.IPv6Address) and (inner := embedded_ipv4(plain)):
        return f"{plain} ({inner})"
    return str(plain)


def url_refusal(policy: EgressPolicy, url: str) -> str | None:
    """Why ``url`` can never be fetched under ``policy``, judged without DNS; or None.

    For checks at apply time: a literal address in any spelling, ``localhost``
    and the like. A name that resolves to a refused address is only caught
    when it is called.
    """
    invalid: str | None = None
    try:
        parsed = httpx.URL(url)
        scheme, host, port, path = parsed.scheme, parsed.host, parsed.port, parsed.path
        credentials = bool(parsed.userinfo)
    except httpx.InvalidURL as exc:
        invalid = f"invalid URL: {exc}"
        try:  # httpx refuses 0177.0.0.1: say what it would have reached
            split = urlsplit(url)
            scheme, host, port, path = split.scheme, split.hostname or "", split.port, split.path
            credentials = split.username is not None
        except ValueError:
            return invalid
    where = shown_url(scheme, host, port, path)
    try:
        check_target(policy, scheme, host, has_credentials=credentials, where=where)
    except EgressRefused as exc:
        return str(exc)
    return invalid


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, from the system resolver."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise EgressRefused(f"could not resolve {host}: {reason}", host=host, reason="dns") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise EgressRefused(f"could not resolve {host}: no addresses", host=host, reason="dns")
    return addresses


# ----------------------------------------------------------------------- guard
class EgressGuard:
    """Vets outbound connections under one :class:`EgressPolicy`, and audits refusals.

    ``resolve`` replaces DNS (tests); ``audit`` receives one entry per refusal.
    """

    def __init__(
        self,
        policy: EgressPolicy | None = None,
        *,
        audit: AuditSink | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        self.policy = policy or EgressPolicy()
        self.audit = audit
        self._resolve = resolve

    def allowing_private(self) -> EgressGuard:
        """This guard, also allowing non-public addresses other than metadata ones."""
        return EgressGuard(self.policy.allowing_private(), audit=self.audit, resolve=self._resolve)

    async def vet(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        purpose: str,
        caller: Caller | None = None,
        has_credentials: bool = False,
        where: str = "",
    ) -> list[IPAddress]:
        """The addresses the server may connect to for this host; every one was checked.

        Raises (and audits) :class:`EgressRefused`.
        """
        try:
            target = check_target(
                self.policy, scheme, host, has_credentials=has_credentials, where=where
            )
            if not isinstance(target, str):
                return [target]
            resolve = self._resolve or resolve_host
            addresses = await resolve(target, port)
            if self.policy.allows_name(target):
                return addresses
            for address in addresses:
                reason = self.policy.refusal(address)
                if reason:
                    raise _refuse(
                        where or target,
                        target,
                        f"{target} resolves to {_spelled(address)}, {reason}",
                    )
            return addresses
        except EgressRefused as exc:
            if exc.reason != "dns":  # a name that does not resolve is a failure, not a refusal
                self.record_refusal(exc, purpose=purpose, caller=caller)
            raise

    def record_refusal(
        self, refusal: EgressRefused, *, purpose: str, caller: Caller | None = None
    ) -> None:
        """One audit entry for a refused connection: the host and the reason, no secrets."""
        if self.audit is None:
            return
        caller = caller or Caller()
        self.audit.append(
            AuditRecord(
                time=datetime.now(UTC),
                key_id=caller.key_id,
                workspace=caller.workspace,
                endpoint=f"egress:{purpose}",
                requested_model=caller.model,
                classification="",
                reasons=(f"host {refusal.host}", refusal.reason),
                provider=None,
                location=refusal.host,
                outcome="denied",
                status=403,
                error_code="egress_denied",
            )
        )

    def transport(
        self, purpose: str, inner: httpx.AsyncBaseTransport | None = None
    ) -> GuardedTransport:
        """An httpx transport that sends only requests this guard allows."""
        return GuardedTransport(self, purpose, inner)


class GuardedTransport(httpx.AsyncBaseTransport):
    """Vets every request (every redirect hop too) and connects to the vetted address.

    The request goes to the checked IP address; the ``Host`` header and the TLS
    server name (and so certificate checking) stay the original host's. With
    several addresses, each is tried in turn while connecting fails. A refusal
    is a :class:`RefusedConnection` (an ``httpx.ConnectError``). Put a
    :class:`Caller` in the request's extensions under :data:`CALLER_EXTENSION`
    to name it in the audit entry.
    """

    def __init__(
        self, guard: EgressGuard, purpose: str, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.guard = guard
        self.purpose = purpose
        # No proxies from the environment: a proxy would connect where we did not check.
        self.inner = inner or httpx.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        caller = request.extensions.get(CALLER_EXTENSION)
        where = shown_url(url.scheme, url.host, url.port, url.path)
        try:
            addresses = await self.guard.vet(
                url.scheme,
                url.host,
                url.port or (443 if url.scheme == "https" else 80),
                purpose=self.purpose,
                caller=caller if isinstance(caller, Caller) else None,
                has_credentials=bool(url.userinfo),
                where=where,
            )
        except EgressRefused as exc:
            raise RefusedConnection(exc, request=request) from None
        extensions: dict[str, Any] = {
            key: value for key, value in request.extensions.items() if key != CALLER_EXTENSION
        }
        if url.scheme == "https" and isinstance(read_host(url.host), str):
            extensions.setdefault("sni_hostname", url.host)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(_without_scope(address))),
                headers=request.headers,  # keeps the original Host header
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self.inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self.inner.aclose()


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers only with vetted addresses, never asks DNS itself."""

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
