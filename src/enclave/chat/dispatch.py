"""Which engine answers a chat request: an app, grounded chat, or the gateway.

One function, so that ``/v1/chat/completions`` and the web UI's conversations
(``chat/conversations.py``) take the same path: ``app/<name>`` models go to
the app runner, requests with ``enclave.knowledge`` to grounded chat, and
everything else straight to the gateway. Each of those classifies, routes,
limits and audits the call the same way whichever door it came in by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave.apps.service import parse_model_id
from enclave.gateway.service import Answer, Call
from enclave.knowledge.grounding import knowledge_options

if TYPE_CHECKING:
    from enclave.api.deps import Services


async def dispatch_chat(svc: Services, call: Call) -> Answer:
    """Answer one parsed and authenticated chat call."""
    app = parse_model_id(str(call.body.get("model", "")))
    if app is not None:
        return await svc.require_apps()[1].handle(call, *app)
    options = knowledge_options(call.body)
    if options is not None:
        return await svc.require_grounding().handle(call, options)
    return await svc.gateway.handle(call)
