"""JSON Schema to GBNF, with the bounds llama-cpp-python's converter leaves out.

llama.cpp enforces a grammar token by token, so whatever the grammar accepts
is what the model can produce. llama-cpp-python's converter handles objects,
arrays, enums, string lengths and patterns, but silently ignores numeric
bounds: ``{"type": "integer", "maximum": 150}`` could yield ``2003``. We add:

* integers with ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
  ``exclusiveMaximum``: an exact digit-range grammar (see
  :func:`integer_alternatives`);
* numbers with integer bounds: the integer part ranged, the top value only
  with zero decimals.

``$defs`` / ``$ref`` (local ``#/...`` references only), ``anyOf``, ``enum`` and
``const`` go through the converter. Its ``resolve_refs`` rewrites each
``$ref`` in place, so it works on a deep copy: the caller's schema (which is
also validated against, and may be forwarded upstream) stays as sent.

Keywords no grammar here can enforce (``multipleOf``, ``uniqueItems``, ``not``
…) are refused with a 400 naming them, rather than accepted and broken: the
promise is that the output validates.

The digit ranges are built as alternatives of atoms and rendered to GBNF; the
same structure renders to a Python regex so tests can check the grammar
accepts exactly the integers in range.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import BuiltinRule, SchemaConverter

from enclave.errors import InvalidRequest

MAX_DIGITS = 16

UNENFORCEABLE = frozenset(
    {
        "multipleOf",
        "uniqueItems",
        "not",
        "if",
        "then",
        "else",
        "contains",
        "minContains",
        "maxContains",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@dataclass(frozen=True)
class Atom:
    """A literal, or one character class repeated ``low..high`` times."""

    literal: str = ""
    first: str = ""
    last: str = ""
    low: int = 1
    high: int = 1

    def gbnf(self) -> str:
        if self.literal:
            return json.dumps(self.literal)
        body = f"[{self.first}]" if self.first == self.last else f"[{self.first}-{self.last}]"
        return body + _repeat(self.low, self.high)

    def regex(self) -> str:
        if self.literal:
            return re.escape(self.literal)
        body = f"[{self.first}]" if self.first == self.last else f"[{self.first}-{self.last}]"
        return body + _repeat(self.low, self.high)


Sequence_ = list[Atom]


def _repeat(low: int, high: int) -> str:
    if low == high == 1:
        return ""
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _lit(text: str) -> Atom:
    return Atom(literal=text)


def _digits(first: str, last: str, count: int = 1) -> Atom:
    return Atom(first=first, last=last, low=count, high=count)


def _fixed_width(low: str, high: str) -> list[Sequence_]:
    """Digit strings of one width between ``low`` and ``high`` (leading zeros allowed)."""
    if not low:
        return [[]]
    if low[0] == high[0]:
        return [[_lit(low[0]), *rest] for rest in _fixed_width(low[1:], high[1:])]
    width = len(low) - 1
    start, end = low[0], high[0]
    alternatives: list[Sequence_] = []
    if low[1:] != "0" * width:
        alternatives += [[_lit(start), *rest] for rest in _fixed_width(low[1:], "9" * width)]
        start = chr(ord(start) + 1)
    upper: list[Sequence_] = []
    if high[1:] != "9" * width:
        upper = [[_lit(end), *rest] for rest in _fixed_width("0" * width, high[1:])]
        end = chr(ord(end) - 1)
    if start <= end:
        alternatives.append([_digits(start, end), *([_digits("0", "9", width)] if width else [])])
    return alternatives + upper


def _natural_range(low: int, high: int | None) -> list[Sequence_]:
    """Canonical decimal numerals (no leading zeros) for ``low <= n <= high``."""
    low_text = str(low)
    if high is None:
        alternatives = _fixed_width(low_text, "9" * len(low_text))
        if len(low_text) < MAX_DIGITS:
            longer = Atom(first="0", last="9", low=len(low_text), high=MAX_DIGITS - 1)
            alternatives.append([_digits("1", "9"), longer])
        return alternatives
    high_text = str(high)
    alternatives = []
    for width in range(len(low_text), len(high_text) + 1):
        start = low_text if width == len(low_text) else "1" + "0" * (width - 1)
        end = high_text if width == len(high_text) else "9" * width
        alternatives += _fixed_width(start, end)
    return alternatives


def integer_alternatives(low: int | None, high: int | None) -> list[Sequence_]:
    """Numerals for the integers in ``[low, high]`` (either end may be open)."""
    alternatives: list[Sequence_] = []
    if low is None or low < 0:  # negative numbers: "-" then a magnitude
        smallest = -high if high is not None and high < 0 else 1
        largest = None if low is None else -low
        if largest is None or smallest <= largest:
            alternatives += [[_lit("-"), *seq] for seq in _natural_range(smallest, largest)]
    if high is None or high >= 0:
        start = 0 if low is None else max(0, low)
        if high is None or start <= high:
            alternatives += _natural_range(start, high)
    return alternatives


def render_gbnf(alternatives: list[Sequence_]) -> str:
    return "(" + " | ".join(" ".join(atom.gbnf() for atom in seq) for seq in alternatives) + ")"


def render_regex(alternatives: list[Sequence_]) -> str:
    return "(?:" + "|".join("".join(atom.regex() for atom in seq) for seq in alternatives) + ")"


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The inclusive integer bounds a schema sets (draft 4 and 2020-12 forms)."""
    low: int | None = None
    high: int | None = None
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    exclusive_min, exclusive_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if minimum is not None:
        low = math.floor(minimum) + 1 if exclusive_min is True else math.ceil(minimum)
    if maximum is not None:
        high = math.ceil(maximum) - 1 if exclusive_max is True else math.floor(maximum)
    if isinstance(exclusive_min, int | float) and not isinstance(exclusive_min, bool):
        bound = math.floor(exclusive_min) + 1
        low = bound if low is None else max(low, bound)
    if isinstance(exclusive_max, int | float) and not isinstance(exclusive_max, bool):
        bound = math.ceil(exclusive_max) - 1
        high = bound if high is None else min(high, bound)
    return low, high


def _is_integral(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    )


# A character inside a JSON string. llama-cpp-python's own rule admits raw control
# characters (a newline inside a string), which JSON does not: the output then fails
# to parse although the grammar accepted it.
JSON_STRING_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" '
    r"[0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])",
    [],
)


class _BoundedConverter(SchemaConverter):
    """llama-cpp-python's converter, plus exact numeric bounds and JSON-safe strings."""

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if name == "char":
            rule = JSON_STRING_CHAR
        return str(super()._add_primitive(name, rule))

    def visit(self, schema: dict[str, Any], name: str) -> str:
        kind = schema.get("type")
        if isinstance(schema, dict) and kind in ("integer", "number") and _has_bounds(schema):
            rule_name = name or "root"
            low, high = integer_bounds(schema)
            if low is not None and high is not None and low > high:
                raise InvalidRequest(
                    f"No {kind} satisfies the bounds at '{name or 'root'}'.",
                    param="response_format",
                )
            whole = render_gbnf(integer_alternatives(low, high))
            if kind == "integer":
                return str(self._add_rule(rule_name, f"{whole} space"))
            # A number: any fraction below the top, only zeros at the top value.
            below = integer_alternatives(low, None if high is None else high - 1)
            fraction = '("." [0-9]{1,16})?'
            rule = f"{render_gbnf(below)} {fraction}" if below else ""
            if high is not None and (low is None or high >= low):
                top = f'"{high}" ("." "0"{{1,16}})?'
                rule = f"{rule} | {top}" if rule else top
            return str(self._add_rule(rule_name, f"({rule}) space"))
        return str(super().visit(schema, name))


def _has_bounds(schema: dict[str, Any]) -> bool:
    return any(key in schema for key in _BOUNDS)


def check_enforceable(schema: Any, path: str = "") -> None:
    """Raise ``InvalidRequest`` for keywords the grammar cannot guarantee."""
    if not isinstance(schema, dict):
        return
    unsupported = sorted(UNENFORCEABLE & schema.keys())
    if unsupported:
        where = path or "the top level"
        raise InvalidRequest(
            f"JSON schema keyword(s) {', '.join(unsupported)} at {where} cannot be enforced "
            "while generating; remove them or validate afterwards.",
            param="response_format",
        )
    if schema.get("type") == "number" and _has_bounds(schema):
        bounds = [schema[key] for key in _BOUNDS if not isinstance(schema.get(key, True), bool)]
        low, _ = integer_bounds(schema)
        if not all(_is_integral(value) for value in bounds) or (low is not None and low < 0):
            raise InvalidRequest(
                f"Number bounds at {path or 'the top level'} must be whole numbers, with a lower "
                "bound of at least 0, to be enforced.",
                param="response_format",
            )
    for key in _SUBSCHEMA_MAPS:
        for child_name, child in (schema.get(key) or {}).items():
            check_enforceable(child, f"{path}/{key}/{child_name}")
    for key in _SUBSCHEMA_LISTS:
        for index, child in enumerate(schema.get(key) or []):
            check_enforceable(child, f"{path}/{key}/{index}")
    for key in _SUBSCHEMA_ONE:
        child = schema.get(key)
        if isinstance(child, list):
            for index, item in enumerate(child):
                check_enforceable(item, f"{path}/{key}/{index}")
        else:
            check_enforceable(child, f"{path}/{key}")


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """Compile a JSON schema to a GBNF grammar whose every output validates."""
    check_enforceable(schema)
    check_refs(schema)
    converter = _BoundedConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(copy.deepcopy(schema), "input")
    converter.visit(resolved, "")
    return str(converter.format_grammar())


def _walk_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _walk_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_refs(value)


def check_refs(schema: dict[str, Any]) -> None:
    """Raise ``InvalidRequest`` unless every ``$ref`` is local and resolves."""
    for ref in _walk_refs(schema):
        if ref != "#" and not ref.startswith("#/"):
            raise InvalidRequest(
                f"JSON schema $ref '{ref}' is not supported: only local references "
                "('#/$defs/...') are.",
                param="response_format",
            )
        target: Any = schema
        for part in ref[2:].split("/") if ref != "#" else ():
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise InvalidRequest(
                    f"JSON schema $ref '{ref}' does not resolve within the schema.",
                    param="response_format",
                )


def hoist_defs(schema: dict[str, Any], prefix: str, base: str) -> tuple[Any, dict[str, Any]]:
    """A copy of ``schema`` without its ``$defs``, and those definitions renamed
    ``<prefix><name>``, with every ``$ref`` rewritten to match.

    For embedding a schema at JSON pointer ``base`` inside a larger one whose root
    collects the definitions: references into ``$defs`` / ``definitions`` point at the
    renamed root definitions, other local references (``#``, ``#/properties/...``)
    are re-based under ``base``.
    """
    schema = copy.deepcopy(schema)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, definition in (schema.pop(key, None) or {}).items():
            defs[f"{prefix}{name}"] = definition

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {key: rewrite(value) for key, value in node.items()}
            ref = node.get("$ref")
            if isinstance(ref, str):
                for key in ("$defs", "definitions"):
                    if ref.startswith(f"#/{key}/"):
                        out["$ref"] = f"#/$defs/{prefix}{ref[len(key) + 3 :]}"
                        break
                else:
                    if ref == "#" or ref.startswith("#/"):
                        out["$ref"] = base + ref[1:]
            return out
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        return node

    return rewrite(schema), {name: rewrite(value) for name, value in defs.items()}
