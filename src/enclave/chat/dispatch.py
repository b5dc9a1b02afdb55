"""Which engine answers a chat request: an app, grounded chat, or the gateway.

One function, so that ``/v1/chat/completions`` and the web UI's conversations
(``chat/conversations.py``) take the same path: ``app/<name>`` models go to
the app runner, requests with ``enclave.knowledge`` to grounded chat, and
everything else straight to the gateway. Each of those classifies, routes,
limits and audits the call the same way whichever door it came in by.
"""

from __future__ import annotations

from typing import Any, Protocol

from enclave.apps.runner import AppRunner
from enclave.apps.service import parse_model_id
from enclave.gateway.service import Answer, Call, Gateway
from enclave.knowledge.grounding import GroundedChat, knowledge_options


class ChatEngines(Protocol):
    """What answering a chat needs from the running services (``api.deps.Services``)."""

    gateway: Gateway

    def require_apps(self) -> tuple[Any, AppRunner]: ...

    def require_grounding(self) -> GroundedChat: ...


async def dispatch_chat(svc: ChatEngines, call: Call) -> Answer:
    """Answer one parsed and authenticated chat call."""
    app = parse_model_id(str(call.body.get("model", "")))
    if app is not None:
        answer = await svc.require_apps()[1].handle(call, *app)
        return answer.echo_model(str(call.body["model"]))
    options = knowledge_options(call.body)
    if options is not None:
        return await svc.require_grounding().handle(call, options)
    return await svc.gateway.handle(call)
