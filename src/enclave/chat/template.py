"""Render chat messages into a prompt with the model's own chat template.

GGUF files carry their Jinja chat template (``tokenizer.chat_template``); we
render it in a sandbox. Models without one get ChatML, which is what SmolLM2
uses anyway. Tool calling is taught in the prompt: the tool list goes into
the system message, past calls are replayed as ``<tool_call>{...}</tool_call>``
and tool results travel as ``tool`` messages. Whether the model may or must
call a tool is enforced separately, by grammar (:mod:`enclave.chat.constraints`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from enclave.errors import InvalidRequest
from enclave.providers.base import ChatMessage, ToolSpec

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def tool_instructions(tools: Sequence[ToolSpec]) -> str:
    listing = json.dumps(
        [
            {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
            for tool in tools
        ],
        ensure_ascii=False,
    )
    return (
        "You can call functions. Their signatures are inside <tools></tools>:\n"
        f"<tools>{listing}</tools>\n"
        "To call one, reply with only "
        f'{TOOL_CALL_OPEN}{{"name": <function-name>, "arguments": <arguments-object>}}'
        f"{TOOL_CALL_CLOSE}. Otherwise answer normally."
    )


def render_tool_call_text(name: str, arguments: str) -> str:
    try:
        parsed: Any = json.loads(arguments or "{}")
    except (json.JSONDecodeError, RecursionError):  # too deep to parse: shown as sent
        parsed = arguments
    call = json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{call}{TOOL_CALL_CLOSE}"


class ChatTemplate:
    """A compiled chat template plus the special tokens it may reference."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_exception
        self._template = environment.from_string(source or CHATML)
        self._bos_token = bos_token
        self._eos_token = eos_token

    @property
    def bos_token(self) -> str:
        return self._bos_token

    def neutralise(self, text: str) -> str:
        """``text`` with anything that would tokenize as a control token broken up.

        The rendered prompt is tokenized with special tokens enabled (the
        template's own ``<|im_start|>`` must become one token), so a message
        containing ``<|im_start|>system`` could otherwise open a turn of its
        own. A zero-width space after ``<`` keeps the text readable.
        """
        text = text.replace("<|", "<\u200b|")
        for token in (self._bos_token, self._eos_token):
            if token and token in text:
                text = text.replace(token, token[:1] + "\u200b" + token[1:])
        return text

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        plain: list[dict[str, str]] = []
        for message in messages:
            content = self.neutralise(message.content)
            if message.role == "assistant" and message.tool_calls:
                calls = "".join(
                    render_tool_call_text(call.name, call.arguments) for call in message.tool_calls
                )
                content = f"{content}{calls}" if content else calls
            plain.append({"role": message.role, "content": content})
        if tools:
            instructions = tool_instructions(tools)
            if plain and plain[0]["role"] == "system":
                plain[0] = {"role": "system", "content": f"{plain[0]['content']}\n\n{instructions}"}
            else:
                plain.insert(0, {"role": "system", "content": instructions})
        try:
            return self._template.render(
                messages=plain,
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"The model's chat template rejected the messages: {exc}") from exc


def _raise_exception(message: str) -> None:
    raise TemplateError(message)
