import json

import pytest

from enclave.chat.constraints import plan_output
from enclave.errors import InvalidRequest
from enclave.providers.base import ResponseFormat, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def test_plain_text_needs_no_grammar() -> None:
    assert plan_output(ResponseFormat(), (), "auto").grammar is None


def test_json_schema_becomes_a_grammar() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    plan = plan_output(ResponseFormat("json_schema", schema), (), "none")
    assert plan.grammar and "root" in plan.grammar
    plan.validate_json('{"a": 1}')
    with pytest.raises(ValueError):
        plan.validate_json('{"a": "x"}')


def test_invalid_schema_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="Unsupported JSON schema"):
        plan_output(ResponseFormat("json_schema", {"type": "no-such-type"}), (), "none")


def test_unknown_named_tool_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan_output(ResponseFormat(), (WEATHER,), "send_email")
    assert info.value.param == "tool_choice"


def test_required_tool_output_is_parsed_into_a_call() -> None:
    plan = plan_output(ResponseFormat(), (WEATHER,), "required")
    assert plan.tool_mode == "forced" and plan.buffers_output
    (call,) = plan.parse_tool_calls('{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}


def test_auto_mode_reads_tagged_calls_and_leaves_text_alone() -> None:
    plan = plan_output(ResponseFormat(), (WEATHER,), "auto")
    assert plan.grammar and "<tool_call>" in plan.grammar
    tagged = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    assert plan.parse_tool_calls(tagged)[0].name == "get_weather"
    assert plan.parse_tool_calls("It is sunny.") == []
    assert plan.may_be_tool_call("<tool")
    assert not plan.may_be_tool_call("It")


def test_truncated_call_is_not_reported_as_a_call() -> None:
    plan = plan_output(ResponseFormat(), (WEATHER,), "required")
    assert plan.parse_tool_calls('{"name": "get_weather", "argu') == []
