"""OpenAI wire models for ``/v1``.

These mirror the OpenAI API closely enough for the official clients, accept
unknown fields the clients may send (and ignore them), and convert themselves
into the provider-neutral domain objects in :mod:`enclave.providers.base` via
``to_generation_request``. Nothing below this module sees a wire model.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enclave.errors import InvalidRequest
from enclave.input_limits import INT64_MAX, INT64_MIN
from enclave.providers.base import (
    ChatMessage,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolSpec,
)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(WireModel):
    type: str
    text: str | None = None


class FunctionCallWire(WireModel):
    name: str
    arguments: str = "{}"


class ToolCallWire(WireModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCallWire


class MessageWire(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"Content parts of type '{part.type}' are not supported; send text parts.",
                    param="messages",
                )
            texts.append(part.text)
        return "".join(texts)

    def to_domain(self) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        calls = tuple(
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
            for call in self.tool_calls or ()
        )
        return ChatMessage(
            role=role,
            content=self.text(),
            name=self.name,
            tool_calls=calls,
            tool_call_id=self.tool_call_id,
        )


class FunctionWire(WireModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolWire(WireModel):
    type: Literal["function"]
    function: FunctionWire


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: dict[str, str]


class JsonSchemaWire(WireModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormatWire(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaWire | None = None

    def to_domain(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None:
                raise InvalidRequest(
                    "response_format of type json_schema needs a json_schema object.",
                    param="response_format",
                )
            return ResponseFormat("json_schema", self.json_schema.schema_, self.json_schema.name)
        return ResponseFormat(self.type)


class StreamOptions(WireModel):
    include_usage: bool = False


class SamplingWire(WireModel):
    """Fields shared by chat and text completions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    n: int = 1
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported; send separate requests for more choices")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingWire):
    messages: list[MessageWire] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    response_format: ResponseFormatWire | None = None
    tools: list[ToolWire] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice_form(cls, value: Any) -> Any:
        """Name the supported forms, instead of pydantic's union internals."""
        forms = (
            "send 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": "..."}}'
        )
        if value is None or value in ("none", "auto", "required"):
            return value
        if isinstance(value, dict):
            kind = value.get("type")
            function = value.get("function")
            if kind == "function" and isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    return value
                raise ValueError(f"a function tool_choice needs function.name; {forms}")
            raise ValueError(f"tool_choice of type {json.dumps(kind)} is not supported; {forms}")
        raise ValueError(f"tool_choice {json.dumps(value)[:40]} is not supported; {forms}")

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        return self

    def to_generation_request(self, tenant: str) -> GenerationRequest:
        tools = tuple(
            ToolSpec(tool.function.name, tool.function.description, tool.function.parameters)
            for tool in self.tools or ()
        )
        if isinstance(self.tool_choice, NamedToolChoice):
            choice = self.tool_choice.function.get("name", "")
        else:
            choice = self.tool_choice or ("auto" if tools else "none")
        return GenerationRequest(
            model=self.model,
            messages=tuple(message.to_domain() for message in self.messages),
            sampling=self.sampling(self.max_completion_tokens or self.max_tokens),
            response_format=(
                self.response_format.to_domain() if self.response_format else ResponseFormat()
            ),
            tools=tools,
            tool_choice=choice,
            tenant=tenant,
        )


class CompletionRequest(SamplingWire):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        if self.best_of not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def to_generation_request(self, prompt: str, tenant: str) -> GenerationRequest:
        return GenerationRequest(
            model=self.model,
            prompt=prompt,
            suffix=self.suffix,
            sampling=self.sampling(self.max_tokens if self.max_tokens is not None else 16),
            tenant=tenant,
        )


EMBEDDING_TOKEN_IDS = (
    "token ids are not accepted, send the text itself (a string or a list of strings). "
    "LangChain's OpenAIEmbeddings sends token ids by default: "
    "create it with check_embedding_ctx_length=False"
)


class EmbeddingRequest(WireModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT64_MAX)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        """Token ids are refused, not decoded: LangChain sends tiktoken's ids, which are
        not the served model's, and ids sent upstream could not be scanned."""
        if isinstance(value, list) and any(not isinstance(item, str) for item in value):
            raise ValueError(EMBEDDING_TOKEN_IDS)
        return value

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- responses (built as dicts on the hot path; these document the shapes) ---


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_call_dict(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if index is not None:
        body["index"] = index
    return body
