"""Bounds on what one input may cost, checked before the expensive step.

Each check here runs in time linear in the input and allocates next to
nothing, so a hostile input is refused (or cut) before it is parsed,
tokenised or stored:

* :func:`json_too_deep` scans JSON bytes for nesting depth without parsing them
  (a deep document makes recursive parsers raise ``RecursionError``);
* :func:`check_text` refuses NUL characters and over-long names, titles and
  prompts with a 400 that names the field;
* :func:`shorten` (from :mod:`enclave.errors`) is how a client's text is quoted
  back in a message or a log;
* :func:`release_memory` hands freed heap back to the system after a large
  request (glibc keeps it otherwise, and RSS never comes down).

The limits themselves are settings (``input_limits:``, see
:class:`enclave.settings.InputLimitsConfig`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from functools import cache

import numpy as np

from enclave.errors import InvalidRequest, shorten
from enclave.settings import InputLimitsConfig

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "check_document",
    "check_json_depth",
    "check_text",
    "json_too_deep",
    "release_memory",
    "shorten",
]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# A JSON string, escapes included (the unrolled form: no backtracking per character).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_BLOCK = 1 << 20


def json_too_deep(data: bytes | str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than ``limit``, without parsing it.

    Brackets inside strings do not count. The cost is a few passes in C over the
    bytes (about 10 ms per MB at worst), whatever the shape of the input.
    Invalid JSON is the parser's concern, which runs afterwards.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b'"' in raw:
        raw = _STRING.sub(b"", raw)
    brackets = raw.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    depth = 0
    for start in range(0, len(brackets), _BLOCK):
        codes = np.frombuffer(brackets, np.uint8, min(_BLOCK, len(brackets) - start), start)
        steps = np.where((codes == 0x5B) | (codes == 0x7B), 1, -1).astype(np.int32)
        levels = np.cumsum(steps) + depth
        if int(levels.max()) > limit:
            return True
        depth = int(levels[-1])
    return False


def check_json_depth(data: bytes | str, limit: int, *, param: str | None = None) -> None:
    """Raise a 400 when JSON text nests deeper than ``limit``."""
    if json_too_deep(data, limit):
        where = f"'{param}'" if param else "The request body"
        raise InvalidRequest(
            f"{where} nests JSON deeper than {limit} levels (input_limits.max_json_depth).",
            param=param,
            code="json_too_deep",
        )


def check_text(value: str | None, param: str, max_chars: int, setting: str) -> None:
    """Refuse NUL characters and text longer than ``max_chars`` (a 400 naming ``param``)."""
    if value is None:
        return
    if "\x00" in value:
        raise InvalidRequest(
            f"'{shorten(param)}' contains a NUL character, which is not allowed.",
            param=param,
            code="nul_character",
        )
    if len(value) > max_chars:
        raise InvalidRequest(
            f"'{param}' is {len(value)} characters long; the limit is {max_chars} "
            f"(input_limits.{setting}).",
            param=param,
            code="too_long",
        )


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_memory() -> bool:
    """Return freed heap pages to the system (glibc ``malloc_trim``); ``False`` elsewhere."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


# Fields of a stored document (an app spec) whose text is bounded, by the setting that bounds it.
_BOUNDED_FIELDS = {
    "system_prompt": "max_prompt_chars",
    "prompt": "max_prompt_chars",
    "description": "max_prompt_chars",
    "judge": "max_prompt_chars",
    "welcome": "max_prompt_chars",
    "name": "max_name_chars",
    "title": "max_title_chars",
    "model": "max_model_name_chars",
}


def check_document(document: object, limits: InputLimitsConfig, root: str) -> None:
    """Walk a client's JSON document (an app spec) before it is stored.

    No string or key may hold a NUL; prompts, names, titles and model names are
    bounded by their settings. The walk is iterative: the depth was bounded when
    the body was read, but a walk must not depend on that.
    """
    stack: list[tuple[str, str | None, object]] = [(root, None, document)]
    while stack:
        path, key, value = stack.pop()
        if isinstance(value, str):
            setting = _BOUNDED_FIELDS.get(key or "")
            limit = getattr(limits, setting) if setting else len(value)
            check_text(value, path, limit, setting or "")
        elif isinstance(value, dict):
            for name, item in value.items():
                name = str(name)
                check_text(name, f"{path} (a key)", len(name), "")
                stack.append((f"{path}.{name}", name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", key, item) for index, item in enumerate(value))
