"""Structured output for local models: grammars in, parsed results out.

``response_format`` and ``tool_choice`` become a GBNF grammar that llama.cpp
enforces while sampling, so a tiny model cannot produce JSON that fails to
parse or misses the schema:

* ``json_object``: any JSON object.
* ``json_schema``: the schema, converted by llama.cpp's own converter.
* ``tool_choice: required`` or a named function: a JSON object
  ``{"name": ..., "arguments": {...}}`` whose arguments follow that
  function's parameter schema (a union over the allowed functions).
* ``tool_choice: auto``: either ``<tool_call>`` + such an object +
  ``</tool_call>``, or ordinary text that does not start with ``<``. The
  model decides; the grammar only guarantees that a call, if made, is valid.

:class:`OutputPlan` carries the grammar and knows how to turn the finished
text back into content or tool calls.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema
from llama_cpp.llama_grammar import JSON_GBNF

from enclave.chat.schema_grammar import hoist_defs, schema_to_gbnf
from enclave.chat.template import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from enclave.errors import InvalidRequest
from enclave.providers.base import ResponseFormat, ToolCall, ToolSpec

_ROOT_RULE = re.compile(r"^root\s*::=", re.MULTILINE)


@dataclass(frozen=True)
class OutputPlan:
    """What the sampler must produce, and how to read it afterwards."""

    grammar: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_mode: str = "none"  # none | auto | forced
    schema: dict[str, Any] | None = None

    @property
    def buffers_output(self) -> bool:
        """Tool calls are parsed whole, so their text is not streamed as content."""
        return self.tool_mode == "forced"

    def may_be_tool_call(self, text_so_far: str) -> bool:
        if self.tool_mode == "forced":
            return True
        if self.tool_mode == "auto":
            stripped = text_so_far.lstrip()
            return TOOL_CALL_OPEN.startswith(stripped[: len(TOOL_CALL_OPEN)]) if stripped else True
        return False

    def parse_tool_calls(self, text: str) -> list[ToolCall]:
        """Tool calls in finished output (empty when the model answered in text)."""
        if self.tool_mode == "none":
            return []
        body = text.strip()
        if self.tool_mode == "auto":
            if not body.startswith(TOOL_CALL_OPEN):
                return []
            body = body[len(TOOL_CALL_OPEN) :]
            body = body.split(TOOL_CALL_CLOSE, 1)[0]
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return []  # cut off by max_tokens; finish_reason says "length"
        if not isinstance(call, dict) or "name" not in call:
            return []
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        return [
            ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", name=call["name"], arguments=arguments)
        ]

    def validate_json(self, text: str) -> None:
        """Raise ``ValueError`` if schema-constrained output does not validate."""
        if self.schema is not None:
            try:
                jsonschema.validate(json.loads(text), self.schema)
            except jsonschema.ValidationError as exc:
                raise ValueError(exc.message) from exc
            except Exception as exc:  # a schema jsonschema cannot use: never a 5xx
                raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """``{"name": ..., "arguments": ...}`` for each tool (a union over several).

    Each tool's parameters sit under ``properties.arguments``, where its
    ``#/$defs/...`` references would no longer resolve: its ``$defs`` move to the
    wrapper's root, renamed per tool so two tools' ``Address`` do not collide.
    """
    defs: dict[str, Any] = {}
    variants = []
    for index, tool in enumerate(tools):
        base = "#/properties/arguments" if len(tools) == 1 else f"#/anyOf/{index}"
        base += "" if len(tools) == 1 else "/properties/arguments"
        arguments, hoisted = hoist_defs(tool.parameters or {"type": "object"}, f"t{index}_", base)
        defs.update(hoisted)
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**schema, "$defs": defs} if defs else schema


def _schema_grammar(schema: dict[str, Any], param: str) -> str:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        return schema_to_gbnf(schema)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param=param) from exc
    except (
        jsonschema.SchemaError,
        ValueError,
        KeyError,
        TypeError,
        RecursionError,
        AssertionError,
        NotImplementedError,
    ) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise InvalidRequest(f"Unsupported JSON schema: {message}", param=param) from exc


def plan_output(
    response_format: ResponseFormat, tools: Sequence[ToolSpec], tool_choice: str
) -> OutputPlan:
    """Build the grammar for a request. Raises ``InvalidRequest`` for bad combinations."""
    names = {tool.name for tool in tools}
    if tool_choice not in {"auto", "none", "required"} and tool_choice not in names:
        raise InvalidRequest(
            f"tool_choice names the function '{tool_choice}', which is not in tools.",
            param="tool_choice",
        )
    if tool_choice == "required" and not tools:
        raise InvalidRequest("tool_choice 'required' needs at least one tool.", param="tool_choice")

    if tools and tool_choice != "none":
        if response_format.kind != "text":
            raise InvalidRequest(
                "Combine response_format with tools only when tool_choice is 'none'.",
                param="response_format",
            )
        allowed = [tool for tool in tools if tool_choice in {"auto", "required", tool.name}]
        call_grammar = _schema_grammar(_tool_call_schema(allowed), "tools")
        if tool_choice == "auto":
            grammar = _ROOT_RULE.sub("call ::=", call_grammar, count=1) + (
                f'\nroot ::= "{TOOL_CALL_OPEN}" call "{TOOL_CALL_CLOSE}" | text\n'
                "text ::= [^<\\x00] [^\\x00]*\n"
            )
            return OutputPlan(grammar=grammar, tools=tuple(tools), tool_mode="auto")
        return OutputPlan(grammar=call_grammar, tools=tuple(allowed), tool_mode="forced")

    if response_format.kind == "json_object":
        return OutputPlan(grammar=JSON_GBNF, schema={"type": "object"})
    if response_format.kind == "json_schema":
        schema = response_format.schema or {}
        return OutputPlan(grammar=_schema_grammar(schema, "response_format"), schema=schema)
    return OutputPlan()
