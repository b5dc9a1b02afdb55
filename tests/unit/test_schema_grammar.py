"""The integer-range grammar accepts exactly the integers in range."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.chat.schema_grammar import (
    integer_alternatives,
    integer_bounds,
    render_regex,
    schema_to_gbnf,
)
from enclave.errors import InvalidRequest

bound = st.one_of(st.none(), st.integers(-100_000, 100_000))


@settings(max_examples=300, deadline=None)
@given(low=bound, high=bound, probe=st.integers(-200_000, 200_000))
def test_integer_grammar_matches_exactly_the_range(
    low: int | None, high: int | None, probe: int
) -> None:
    if low is not None and high is not None and low > high:
        low, high = high, low
    pattern = re.compile(render_regex(integer_alternatives(low, high)))
    inside = (low is None or probe >= low) and (high is None or probe <= high)
    assert bool(pattern.fullmatch(str(probe))) == inside
    if low is not None and high is not None and high - low < 300:
        for value in range(low, high + 1):  # every value in a small range
            assert pattern.fullmatch(str(value))


@pytest.mark.parametrize("text", ["007", "-0", "+5", "1.0", " 1", ""])
def test_non_canonical_numerals_are_rejected(text: str) -> None:
    pattern = re.compile(render_regex(integer_alternatives(-1000, 1000)))
    assert not pattern.fullmatch(text)


def test_exclusive_bounds_both_drafts() -> None:
    assert integer_bounds({"exclusiveMinimum": 0, "exclusiveMaximum": 10}) == (1, 9)
    assert integer_bounds(
        {"minimum": 0, "exclusiveMinimum": True, "maximum": 10, "exclusiveMaximum": True}
    ) == (1, 9)
    assert integer_bounds({"minimum": 0.5, "maximum": 9.5}) == (1, 9)


def test_bounded_schemas_compile() -> None:
    grammar = schema_to_gbnf(
        {
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "share": {"type": "number", "minimum": 0, "maximum": 1},
            },
        }
    )
    assert '"1" [0-4] [0-9]' in grammar or "[0-4]" in grammar


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "multipleOf": 5},
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        {"type": "object", "properties": {"x": {"not": {"type": "string"}}}},
        {"type": "number", "minimum": 0.5},
        {"type": "number", "minimum": -3},
        {"type": "integer", "minimum": 5, "maximum": 1},
    ],
)
def test_unenforceable_schemas_are_refused(schema: dict) -> None:
    with pytest.raises(InvalidRequest):
        schema_to_gbnf(schema)
