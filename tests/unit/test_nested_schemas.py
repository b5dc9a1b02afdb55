"""``$defs``/``$ref``, ``anyOf``, ``enum`` and ``const`` in response_format and tools."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from enclave.chat.constraints import _tool_call_schema, plan_output
from enclave.chat.schema_grammar import hoist_defs, schema_to_gbnf
from enclave.errors import InvalidRequest
from enclave.providers.base import ResponseFormat, ToolSpec
from tests.nested_models import PERSON, Person, Shipment


def test_a_nested_schema_compiles_without_changing_the_callers_schema() -> None:
    schema = Person.model_json_schema()
    sent = copy.deepcopy(schema)
    plan = plan_output(ResponseFormat("json_schema", schema), (), "none")
    assert schema == sent  # resolve_refs used to rewrite "#/$defs/X" to "input#/$defs/X"
    assert plan.grammar is not None
    assert 'Priority ::= "\\"low\\"" | "\\"high\\""' in plan.grammar
    assert "Street-number ::=" in plan.grammar  # the bounds reach the third level
    plan.validate_json(json.dumps(PERSON))  # used to raise an Unresolvable referencing error


def test_output_that_misses_a_nested_schema_is_a_value_error() -> None:
    plan = plan_output(ResponseFormat("json_schema", Person.model_json_schema()), (), "none")
    wrong = {**PERSON, "address": {**PERSON["address"], "street": {"name": "x", "number": 0}}}
    with pytest.raises(ValueError):
        plan.validate_json(json.dumps(wrong))


def test_a_schema_jsonschema_cannot_use_is_a_value_error_not_a_crash() -> None:
    plan = plan_output(ResponseFormat("json_schema", Person.model_json_schema()), (), "none")
    broken = type(plan)(schema={"$ref": "#/$defs/Missing"})
    with pytest.raises(ValueError):
        broken.validate_json("{}")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"$ref": "#/$defs/Missing"}, "does not resolve"),
        ({"$ref": "https://example.com/s.json"}, "only local"),
        ({"properties": {"a": {"$ref": "other.json#/x"}}}, "only local"),
    ],
)
def test_a_reference_that_cannot_be_followed_is_a_400(schema: dict, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_output(ResponseFormat("json_schema", schema), (), "none")
    assert caught.value.status_code == 400 and words in caught.value.message


def test_anyof_enum_and_const_compile() -> None:
    schema = {
        "anyOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
            {"type": "string", "enum": ["x", "y"]},
        ]
    }
    grammar = schema_to_gbnf(schema)
    assert '"\\"a\\""' in grammar and '"\\"x\\"" | "\\"y\\""' in grammar


def test_hoisting_renames_definitions_and_rewrites_references() -> None:
    schema = {
        "$defs": {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}}, "B": {}},
        "properties": {"a": {"$ref": "#/$defs/A"}, "me": {"$ref": "#"}},
    }
    sent = copy.deepcopy(schema)
    body, defs = hoist_defs(schema, "t0_", "#/properties/arguments")
    assert schema == sent
    assert body == {
        "properties": {"a": {"$ref": "#/$defs/t0_A"}, "me": {"$ref": "#/properties/arguments"}}
    }
    assert defs["t0_A"]["properties"]["b"] == {"$ref": "#/$defs/t0_B"}


def _tools() -> tuple[ToolSpec, ToolSpec]:
    person = ToolSpec("save_person", "", Person.model_json_schema())
    shipment = ToolSpec("ship", "", Shipment.model_json_schema())
    return person, shipment


def test_two_tools_with_nested_schemas_and_colliding_names_validate_apart() -> None:
    person, shipment = _tools()
    wrapper = _tool_call_schema([person, shipment])
    jsonschema.Draft202012Validator.check_schema(wrapper)
    valid = jsonschema.Draft202012Validator(wrapper)
    assert valid.is_valid({"name": "save_person", "arguments": PERSON})
    parcel = {"to": {"postcode": "0150"}, "express": True}
    assert valid.is_valid({"name": "ship", "arguments": parcel})
    assert not valid.is_valid({"name": "ship", "arguments": PERSON})
    assert not valid.is_valid({"name": "save_person", "arguments": parcel})


@pytest.mark.parametrize("choice", ["required", "auto", "save_person"])
def test_tools_with_nested_schemas_get_a_grammar(choice: str) -> None:
    """This was a 400: the nested ``#/$defs/...`` no longer resolved."""
    tools = _tools()
    sent = copy.deepcopy([tool.parameters for tool in tools])
    plan = plan_output(ResponseFormat(), tools, choice)
    assert plan.grammar is not None and "t0_Street" in plan.grammar.replace("-", "_")
    assert [tool.parameters for tool in tools] == sent
    call = plan.parse_tool_calls(
        json.dumps({"name": "save_person", "arguments": PERSON})
        if choice != "auto"
        else "<tool_call>"
        + json.dumps({"name": "save_person", "arguments": PERSON})
        + "</tool_call>"
    )
    assert json.loads(call[0].arguments) == PERSON
