"""One call of an app's API operation, and its result as text for a small model.

:func:`call_operation` turns validated arguments into one HTTP request and
never lets the API, or the network, take more than it was given:

* arguments are validated against ``Operation.validation_schema`` first;
  invalid ones raise :class:`CallError` and nothing is sent;
* path parameters are percent-encoded with no safe characters, so a value
  cannot climb out of its path segment (``../admin``);
* configured headers (with ``env:NAME`` resolved by :func:`resolve_headers`)
  override header parameters of the same name: the model never sets
  credentials;
* redirects are not followed: a 3xx is the result;
* the server's client sends through the outbound address guard
  (:class:`enclave.egress.GuardedTransport`): an API on a loopback, private,
  link-local or metadata address that ``egress.allow`` does not allow is
  never contacted, and the result's ``error`` says so. ``caller`` names the
  key, workspace and app in the audit entry of such a refusal;
* one deadline (``timeout_s``) covers connecting, sending and reading, and
  the body is read as a stream and abandoned past ``max_bytes`` (counted after
  decompression);
* a network failure, a timeout or an oversized body is a :class:`CallResult`
  with ``error`` set, never an exception.

:func:`render_result` turns the result into short lines a tiny model can
repeat. The runner wraps that text in ``<api_result>`` tags, so the data can
never contain one of those tags itself, nor a chat-template control token such
as ``<|im_start|>`` (the ``<`` becomes ``\u2039``).

Error messages and ``CallResult.url`` are safe to show users and write to the
audit log: they never contain header values or the credentials or query of
the configured base URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jsonschema

from enclave.apps.openapi import Operation
from enclave.egress import CALLER_EXTENSION, Caller, RefusedConnection

ENV_TOKEN = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
# "<api_result" closes the runner's wrapper; "<|" opens chat-template control tokens
# (<|im_start|>) that llama.cpp would read as real ones inside message content.
_RESULT_TAG = re.compile(r"<(?=\s*/?\s*api_result|\|)", re.IGNORECASE)
_DEFUSED = "\u2039"  # a "<" look-alike: readable, but no tag to the runner or the tokenizer
_PATH_LITERAL_SAFE = "/:@!$&'()*+,;=~%-._"


class CallError(Exception):
    """The call cannot be made. The message is safe to show and to audit."""


@dataclass
class CallResult:
    """What one call produced. ``error`` is set when there is no usable response."""

    method: str
    url: str
    status: int | None = None
    json: Any = None
    text: str = ""
    truncated: bool = False
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A complete 2xx response."""
        return self.error is None and self.status is not None and 200 <= self.status < 300


def referenced_env(headers: Mapping[str, str]) -> set[str]:
    """The variable names that ``env:NAME`` tokens in header values refer to."""
    return {name for value in headers.values() for name in ENV_TOKEN.findall(value)}


def resolve_headers(
    headers: Mapping[str, str],
    allowed_env: list[str],
    environ: Mapping[str, str] = os.environ,
    *,
    kind: str = "header",
) -> dict[str, str]:
    """Headers (or other ``kind`` of named values) with every ``env:NAME`` token replaced
    by that variable's value.

    Only names in ``allowed_env`` (``apps.secret_env``) may be read. Raises
    :class:`CallError` naming the header and variable, never a value.
    """
    allowed = set(allowed_env)
    resolved: dict[str, str] = {}
    for header, value in headers.items():

        def substitute(match: re.Match[str], header: str = header) -> str:
            name = match.group(1)
            if name not in allowed:
                raise CallError(
                    f"{kind} '{header}' references env:{name}, which apps.secret_env does not allow"
                )
            secret = environ.get(name)
            if not secret:
                raise CallError(
                    f"{kind} '{header}' references env:{name}, which is not set on the server"
                )
            if "\r" in secret or "\n" in secret:
                raise CallError(f"{kind} '{header}': env:{name} contains a line break")
            return secret

        resolved[header] = ENV_TOKEN.sub(substitute, value)
    return resolved


async def call_operation(
    operation: Operation,
    arguments: dict[str, Any],
    *,
    base_url: str,
    headers: dict[str, str],
    timeout_s: float,
    max_bytes: int,
    client: httpx.AsyncClient,
    caller: Caller | None = None,
) -> CallResult:
    """Call ``operation`` with ``arguments`` on the API at ``base_url``.

    ``headers`` are the API's configured headers, already resolved. Raises
    :class:`CallError` for arguments that do not validate (nothing is sent);
    every failure after that is a result with ``error`` set.
    """
    _validate(operation, arguments)
    base = _base(base_url)
    path = _expand_path(operation, arguments)
    query = _query(operation, arguments)
    request_headers = {"Accept": "application/json"}
    request_headers.update(_header_parameters(operation, arguments))
    configured = {name.lower() for name in headers}
    request_headers = {k: v for k, v in request_headers.items() if k.lower() not in configured}
    request_headers.update(headers)
    content: bytes | None = None
    if operation.body_schema is not None and "body" in arguments:
        content = _encode_body(operation, arguments["body"], request_headers)

    raw_path = base.raw_path.split(b"?", 1)[0].decode("ascii").rstrip("/") + path
    target = base.copy_with(raw_path=raw_path.encode("ascii"))
    shown = target.copy_with(userinfo=b"")
    shown_url = str(shown) + (f"?{urlencode(query)}" if query else "")
    result = CallResult(method=operation.method, url=shown_url)
    # Whole values and their parts ("Bearer <token>"): an error must not echo either.
    secrets = {part for value in headers.values() for part in [value, *value.split()]}
    secrets = {secret for secret in secrets if len(secret) >= 8}

    started = time.perf_counter()
    try:
        request = client.build_request(
            operation.method,
            target,
            params=[*base.params.multi_items(), *query],
            headers=request_headers,
            content=content,
            timeout=httpx.Timeout(timeout_s),
            extensions={CALLER_EXTENSION: caller} if caller is not None else None,
        )
        async with asyncio.timeout(timeout_s):
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                await _read(response, result, max_bytes)
            finally:
                await response.aclose()
    except RefusedConnection as exc:
        result.status, result.json, result.text = None, None, ""
        result.error = _scrub(str(exc.refusal), secrets)
    except (TimeoutError, httpx.TimeoutException):
        result.status, result.json, result.text = None, None, ""
        result.error = f"no complete response within {timeout_s:g} s"
    except httpx.RequestError as exc:
        result.status, result.json, result.text = None, None, ""
        result.error = _scrub(f"could not reach the API: {_reason(exc)}", secrets)
    except httpx.InvalidURL as exc:
        raise CallError(f"invalid URL for {operation.key}: {exc}") from None
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


async def _read(response: httpx.Response, result: CallResult, max_bytes: int) -> None:
    result.status = response.status_code
    content_type = response.headers.get("content-type", "")
    declared = response.headers.get("content-length", "")
    too_large = f"the response is larger than {max_bytes} bytes"
    if declared.isdigit() and int(declared) > max_bytes:
        result.truncated, result.error = True, too_large
        return
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            result.truncated, result.error = True, too_large
            return
    try:
        result.text = body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        result.text = body.decode("utf-8", errors="replace")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            result.json = json.loads(result.text)
        except ValueError:
            result.json = None


def _validate(operation: Operation, arguments: Any) -> None:
    if not isinstance(arguments, dict):
        raise CallError(f"arguments for {operation.tool_name} must be a JSON object")
    validator = jsonschema.Draft202012Validator(operation.validation_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        place = f" at '{where}'" if where else ""
        raise CallError(f"invalid arguments for {operation.tool_name}{place}: {error.message}")


def _base(base_url: str) -> httpx.URL:
    try:
        base = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise CallError(f"invalid API URL: {exc}") from None
    if base.scheme not in {"http", "https"} or not base.host:
        raise CallError("the API URL must be http:// or https:// with a host")
    return base


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _expand_path(operation: Operation, arguments: dict[str, Any]) -> str:
    pieces = re.split(r"(\{[^{}]+\})", operation.path)
    out = []
    for piece in pieces:
        if piece.startswith("{") and piece.endswith("}"):
            value = arguments[piece[1:-1]]
            if isinstance(value, list):
                out.append(",".join(quote(_scalar(item), safe="") for item in value))
            else:
                out.append(quote(_scalar(value), safe=""))
        else:
            out.append(quote(piece, safe=_PATH_LITERAL_SAFE))
    return "".join(out)


def _query(operation: Operation, arguments: dict[str, Any]) -> list[tuple[str, str]]:
    query: list[tuple[str, str]] = []
    for parameter in operation.parameters:
        value = arguments.get(parameter.name)
        if parameter.location != "query" or value is None:
            continue
        if isinstance(value, list):
            items = [_scalar(item) for item in value if item is not None]
            if parameter.explode:
                query += [(parameter.name, item) for item in items]
            elif items:
                query.append((parameter.name, ",".join(items)))
        else:
            query.append((parameter.name, _scalar(value)))
    return query


def _header_parameters(operation: Operation, arguments: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for parameter in operation.parameters:
        value = arguments.get(parameter.name)
        if parameter.location != "header" or value is None:
            continue
        text = ",".join(map(_scalar, value)) if isinstance(value, list) else _scalar(value)
        if "\r" in text or "\n" in text:
            raise CallError(f"header parameter '{parameter.name}' contains a line break")
        headers[parameter.name] = text
    return headers


def _encode_body(operation: Operation, body: Any, headers: dict[str, str]) -> bytes:
    media_type = operation.body_media_type or "application/json"
    if media_type.startswith("text/"):
        headers["Content-Type"] = f"{media_type}; charset=utf-8"
        return str(body).encode("utf-8")
    headers["Content-Type"] = media_type
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _reason(exc: httpx.RequestError) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _scrub(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# --- results as text ------------------------------------------------------------------------------


def render_result(result: CallResult, *, max_chars: int) -> str:
    """The result as plain lines, at most ``max_chars`` long.

    A list of objects becomes numbered lines (``1. id: 12, title: Welder``),
    an object ``key: value`` lines (nested values as compact JSON), anything
    else its text. ``<api_result`` tags and ``<|`` control tokens inside the
    data are defused.
    """
    status = result.status or 0
    if result.error is not None:
        text = f"error (HTTP {status}): " if status else "error: "
        text += result.error
    else:
        body = _render_value(result.json) if result.json is not None else result.text.strip()
        if not 200 <= status < 300:
            text = f"HTTP {status}" + (f"\n{body}" if body else "")
        else:
            text = body or f"done (HTTP {status}, no content)"
    return _truncate(_RESULT_TAG.sub(_DEFUSED, text), max_chars)


def _render_value(value: Any) -> str:
    if isinstance(value, list):
        if not value:
            return "(no results)"
        return "\n".join(f"{index}. {_render_item(item)}" for index, item in enumerate(value, 1))
    if isinstance(value, dict):
        if not value:
            return "(empty object)"
        return "\n".join(f"{key}: {_inline(item)}" for key, item in value.items())
    return _inline(value)


def _render_item(item: Any) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{key}: {_inline(value)}" for key, value in item.items()) or "{}"
    return _inline(item)


def _inline(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    lines = text.count("\n") + 1
    note = "\n… (truncated: {shown} of {total} lines shown)"
    room = max_chars - len(note.format(shown=lines, total=lines))
    if room <= 0:
        return text[:max_chars]
    cut = text[:room]
    if "\n" in cut:
        cut = cut[: cut.rindex("\n")]
    if not cut:  # one long first line: cut inside it
        cut = text[:room]
    return cut + note.format(shown=cut.count("\n") + 1, total=lines)
