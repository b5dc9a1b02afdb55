"""The gateway: one request from classification to audit entry.

For every call to a token-spending endpoint, :meth:`Gateway.handle`:

1. classifies the request (:mod:`enclave.gateway.classification`);
2. plans where it may go (:mod:`enclave.gateway.routing`) and fails closed
   with 403 ``no_eligible_provider`` when nowhere cleared is up;
3. admits it against the key's and workspace's limits (429 otherwise);
4. tries the planned targets in order until one accepts. A target counts as
   accepted once its first byte is in hand, so a provider that dies before
   that falls over to the next eligible one and the client never notices;
5. passes the answer through (an upstream's bytes unchanged, streams chunk by
   chunk) and, when it ends, settles the limits and commits the audit entry
   with the usage.

Nothing answered unlogged (see :mod:`enclave.gateway.audit`): before step 4
sends anything, an intent is committed, so a crash leaves an ``interrupted``
entry; the entry and usage are committed before the client gets the end of
the answer: the last byte of a body, or a stream's ``[DONE]`` (with the usage
chunk before it) or final error event. If the database cannot commit, the
request fails closed: 503 ``audit_unavailable``, or for a stream whose
content has gone out, an error event in place of ``[DONE]``, so no client
takes the answer as complete.

A stream whose provider dies mid-way ends with an SSE error event, never a
silent truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from enclave.auth.principals import Principal
from enclave.errors import (
    EnclaveError,
    PolicyDenied,
    QueueFull,
    RateLimited,
    ServiceUnavailable,
    UpstreamUnavailable,
)
from enclave.gateway.audit import AuditLog, AuditRecord
from enclave.gateway.classification import Classifier, Decision
from enclave.gateway.forwarding import Outbound
from enclave.gateway.limits import Limiter, LimitRule, Reservation, Subject
from enclave.gateway.routing import RoutingTable, Target
from enclave.gateway.usage import UsageLedger, UsageRecord
from enclave.inference import Generation, InferenceService
from enclave.metrics import Metrics
from enclave.providers.base import Transcript, TranscriptionOptions
from enclave.providers.openai_upstream import OpenAIUpstream, UpstreamReply
from enclave.runners.routing import prefix_key
from enclave.settings import LimitsConfig, Settings, WorkspaceConfig
from enclave.storage.batch_writer import CommitFailed
from enclave.wire import responses
from enclave.wire.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger(__name__)

Wire = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# The start of the events that end a stream: held back until the audit entry commits.
STREAM_ENDS = (b"data: [DONE]", b'data: {"error"')
ENDPOINT_PATHS = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embeddings": "/embeddings",
    "transcription": "/audio/transcriptions",
    "translation": "/audio/translations",
}


@dataclass(slots=True)
class Call:
    """One request to a token-spending endpoint, parsed and authenticated."""

    capability: str  # "chat", "completion" or "embeddings"
    principal: Principal
    body: dict[str, Any]
    wire: Wire
    classification_header: str | None
    received: float = field(default_factory=time.perf_counter)
    # (class, source) of each knowledge passage the request carries (grounding).
    knowledge: tuple[tuple[str, str], ...] = ()
    # (class, reason) of anything else that raises the request's class (an app's floor).
    raised: tuple[tuple[str, str], ...] = ()
    # The path the client called, when it differs from the capability's (/v1/responses).
    path: str | None = None

    @property
    def endpoint(self) -> str:
        return self.path or "/v1" + ENDPOINT_PATHS[self.capability]

    @property
    def streaming(self) -> bool:
        return bool(getattr(self.wire, "stream", False))


@dataclass(slots=True)
class Answer:
    """What the HTTP layer sends: a body or a stream, with the gateway headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    media_type: str = "application/json"

    @classmethod
    def fixed_chat(
        cls,
        headers: dict[str, str],
        model: str,
        text: str,
        extra: dict[str, Any],
        *,
        stream: bool,
        annotations: list[dict[str, Any]] | None = None,
    ) -> Answer:
        """A chat answer decided in code (no model): a body, or the same as a stream.
        ``annotations`` go on the message (a delta of their own in a stream)."""
        if stream:
            return cls(
                200,
                headers,
                stream=responses.fixed_chat_stream(model, text, extra, annotations),
                media_type="text/event-stream",
            )
        body = responses.fixed_chat_body(model, text, extra, annotations)
        return cls(200, headers, body=orjson.dumps(body))

    def echo_model(self, model: str) -> Answer:
        """Name ``model`` (what the client asked for: an alias, ``app/<name>``) as the
        answer's ``model``; the ``x-enclave-model`` header names the one that served."""
        if (
            self.status != 200
            or not model
            or self.media_type
            not in (
                "application/json",
                "text/event-stream",
            )
        ):
            return self
        if self.stream is not None:
            self.stream = responses.stream_with_model(self.stream, model)
        elif self.body is not None:
            self.body = responses.body_with_model(self.body, model)
        return self

    def add_fields(self, fields: dict[str, Any]) -> Answer:
        """Add top-level fields to a successful chat answer: to the body, or as a final
        ``choices: []`` chunk of a stream. Errors pass unchanged."""
        if self.status != 200:
            return self
        if self.stream is not None:
            self.stream = responses.append_fields(self.stream, fields)
        elif self.body is not None:
            self.body = orjson.dumps({**orjson.loads(self.body), **fields})
        return self


def request_texts(body: dict[str, Any]) -> Iterator[str]:
    """The conversation a request carries, for the audit log's ``prompt_text``:
    message text, tool-call arguments and prompts (the detectors read more:
    every forwarded string, see :mod:`enclave.gateway.forwarding`)."""
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield function["arguments"]
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


AUDIT_UNAVAILABLE = "audit_unavailable"


def conversation_key(body: dict[str, Any]) -> str | None:
    """The prefix-affinity key of a chat request: its first two messages' text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    texts = []
    for message in messages[:2]:
        content = message.get("content") if isinstance(message, dict) else None
        texts.append(content if isinstance(content, str) else repr(content))
    return prefix_key(texts)


def _audit_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The audit log cannot be written, so the request was not answered. Try again later.",
        code=AUDIT_UNAVAILABLE,
    )


def _rule(config: LimitsConfig) -> LimitRule:
    return LimitRule(
        requests_per_minute=config.requests_per_minute,
        tokens_per_minute=config.tokens_per_minute,
        token_budget=config.token_budget,
        budget_period=config.budget_period,
    )


class _Ledger:
    """Everything known about one call, turned into accounting when it ends."""

    __slots__ = (
        "audio_seconds",
        "call",
        "closed",
        "completion_tokens",
        "decision",
        "gateway",
        "intent",
        "outbound",
        "policy",
        "prompt_tokens",
        "reservation",
        "response_text",
        "target",
        "upstream_seconds",
    )

    def __init__(self, gateway: Gateway, call: Call, policy: WorkspaceConfig) -> None:
        self.gateway = gateway
        self.call = call
        self.policy = policy
        self.outbound: Outbound | None = None  # set by classification: what may leave
        self.decision: Decision | None = None
        self.reservation: Reservation | None = None
        self.target: Target | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.audio_seconds = 0.0  # transcriptions: the audio's duration
        self.upstream_seconds = 0.0
        self.response_text: str | None = None
        self.intent: str | None = None  # the committed intent this call's entry completes
        self.closed = False

    def overhead_ms(self) -> float:
        elapsed = time.perf_counter() - self.call.received
        return max(0.0, (elapsed - self.upstream_seconds) * 1000)

    def partial_headers(self) -> dict[str, str]:
        """The gateway headers for an error: whatever was decided before it."""
        headers = {
            "x-enclave-provider": self.target.provider if self.target else "none",
            "x-enclave-overhead-ms": f"{self.overhead_ms():.3f}",
        }
        if self.target is not None:
            headers["x-enclave-model"] = self.target.model
        if self.decision is not None:
            headers["x-enclave-classification"] = self.decision.level
        return headers

    def headers(self) -> dict[str, str]:
        assert self.target is not None and self.decision is not None
        return {
            "x-enclave-provider": self.target.provider,
            "x-enclave-model": self.target.model,
            "x-enclave-classification": self.decision.level,
            "x-enclave-overhead-ms": f"{self.overhead_ms():.3f}",
        }

    def record(
        self,
        outcome: str,
        status: int,
        error_code: str | None,
        target: Target | None,
        now: datetime,
    ) -> AuditRecord:
        """The audit entry for this call as it stands."""
        call = self.call
        principal = call.principal
        decision = self.decision
        keep_text = self.policy.log_content
        return AuditRecord(
            time=now,
            key_id=principal.key_id,
            workspace=principal.workspace,
            endpoint=call.endpoint,
            requested_model=str(call.body.get("model", "")),
            classification=decision.level if decision else "",
            reasons=decision.reasons if decision else (),
            provider=target.provider if target else None,
            location=target.location if target else None,
            outcome=outcome,
            status=status,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=round((time.perf_counter() - call.received) * 1000, 3),
            error_code=error_code,
            findings=tuple((f.type, f.count) for f in decision.findings) if decision else (),
            prompt_text="\n".join(request_texts(call.body)) if keep_text else None,
            response_text=self.response_text if keep_text else None,
            intent=self.intent,
            user_id=principal.user_id,
        )

    async def intend(self, target: Target) -> None:
        """Commit the intent (before anything is sent to ``target``); 503 if it cannot be."""
        record = self.record("interrupted", 0, None, target, datetime.now(UTC))
        try:
            self.intent = await self.gateway.audit.intend(record)
        except CommitFailed:
            log.error("the audit log cannot commit: refusing the request")
            raise _audit_unavailable() from None

    async def close(self, outcome: str, status: int, error: EnclaveError | None = None) -> None:
        """Settle limits and commit the audit entry with the usage, once per call.

        Returns when both are committed. Raises ServiceUnavailable
        (``audit_unavailable``) when they cannot be: the caller must not
        deliver the end of the answer.
        """
        if self.closed:
            return
        self.closed = True
        gateway = self.gateway
        principal = self.call.principal
        tokens = self.prompt_tokens + self.completion_tokens
        try:
            if self.reservation is not None:
                await gateway.limiter.settle(self.reservation, tokens)
        except Exception:
            log.exception("settling limits failed")
        now = datetime.now(UTC)
        usage = None
        if self.target is not None and (tokens or self.audio_seconds or outcome == "ok"):
            usage = UsageRecord(
                time=now,
                key_id=principal.key_id,
                workspace=principal.workspace,
                provider=self.target.provider,
                model=self.target.model,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                audio_seconds=self.audio_seconds,
            )
        record = self.record(outcome, status, error.code if error else None, self.target, now)
        gateway.metrics.gateway_requests.labels(
            self.target.provider if self.target else "none", outcome
        ).inc()
        # Stored instead if this commit fails and a retry succeeds: the client was refused
        # (503), or its stream ended with an error event.
        fallback = replace(
            record,
            outcome="error",
            status=200 if self.call.streaming and status == 200 else 503,
            error_code=AUDIT_UNAVAILABLE,
        )
        try:
            await gateway.audit.commit(record, usage, fallback=fallback)
        except CommitFailed:
            log.error("the audit log cannot commit: the answer is withheld")
            raise _audit_unavailable() from None


class Gateway:
    """Routes token-spending calls by classification, with limits, usage and audit."""

    def __init__(
        self,
        *,
        settings: Settings,
        routing: RoutingTable,
        classifier: Classifier,
        limiter: Limiter,
        usage: UsageLedger,
        audit: AuditLog,
        inference: InferenceService,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.routing = routing
        self.classifier = classifier
        self.limiter = limiter
        self.usage = usage
        self.audit = audit
        self.inference = inference
        self.metrics = metrics
        self._policies = {workspace.name: workspace for workspace in settings.workspaces}
        self._key_rule = _rule(settings.key_limits)
        self._workspace_rules = {
            workspace.name: _rule(workspace.limits) for workspace in settings.workspaces
        }

    async def provider_status(self) -> list[dict[str, Any]]:
        """Each provider's health, clearance, location and circuit state."""
        status = await self.inference.provider_status()
        configs = {config.name: config for config in self.settings.providers}
        for entry in status:
            config = configs.get(entry["name"])
            breaker = self.routing.breakers.get(entry["name"])
            entry["type"] = config.type if config else "custom"
            entry["clearance"] = config.clearance if config else self.routing.levels.names[-1]
            entry["location"] = config.location if config else "on-prem"
            entry["circuit"] = breaker.state if breaker else "closed"
            entry["consecutive_failures"] = breaker.failures if breaker else 0
        return status

    def policy(self, workspace: str) -> WorkspaceConfig:
        found = self._policies.get(workspace)
        if found is None:
            found = self._policies[workspace] = self.settings.workspace_policy(workspace)
        return found

    def subjects(self, principal: Principal) -> list[Subject]:
        subjects = []
        if not self._key_rule.empty:
            subjects.append(Subject("key", str(principal.key_id), self._key_rule))
        rule = self._workspace_rules.get(principal.workspace)
        if rule is not None and not rule.empty:
            subjects.append(Subject("workspace", principal.workspace, rule))
        return subjects

    async def handle(self, call: Call) -> Answer:
        """Classify, route, admit and dispatch one call (see the module docstring)."""
        policy = self.policy(call.principal.workspace)
        ledger = _Ledger(self, call, policy)
        try:
            answer = await self._handle(call, ledger, policy)
            requested = str(call.body.get("model", ""))
            # An alias or a qualified name is echoed; "default" says which model it was.
            return answer if requested == "default" else answer.echo_model(requested)
        except EnclaveError as error:
            error.headers = {**error.headers, **ledger.partial_headers()}
            outcome = (
                "denied"
                if isinstance(error, PolicyDenied)
                else "rate_limited"
                if isinstance(error, RateLimited)
                else "error"
            )
            await ledger.close(outcome, error.status_code, error)
            raise
        except asyncio.CancelledError:  # the client went away: not a server error
            await ledger.close("cancelled", 499)
            raise
        except BaseException:
            await ledger.close("error", 500)
            raise

    async def answer_without_model(self, call: Call, outcome: str) -> dict[str, str]:
        """Classify and audit a call answered in code (an abstention, a disagreement).

        Nothing is sent to a provider. Returns the gateway headers.
        """
        policy = self.policy(call.principal.workspace)
        ledger = _Ledger(self, call, policy)
        ledger.decision = self._classify(call, ledger, policy)
        await ledger.close(outcome, 200)
        return {**ledger.partial_headers(), "x-enclave-model": "none"}

    async def transcribe(
        self,
        principal: Principal,
        model: str,
        audio: bytes,
        options: TranscriptionOptions,
        *,
        classification_header: str | None = None,
    ) -> tuple[Transcript, dict[str, str]]:
        """Speech to text on an embedded engine, then classified and audited like any text.

        The audio goes only to a provider cleared for the request's class before
        transcription (the workspace floor, the header). The
        transcript (``call.body["input"]`` once known) then goes through the
        detectors; its class is the answer's ``X-Enclave-Classification``.
        Usage records the transcript's estimated tokens as completion tokens and
        the audio's duration as ``audio_seconds``.
        """
        capability = "translation" if options.task == "translate" else "transcription"
        # The transcript is classified as text: the call's wire is that text, once known.
        call = Call(
            capability=capability,
            principal=principal,
            body={"model": model},
            wire=EmbeddingRequest(model=model, input=""),
            classification_header=classification_header,
        )
        policy = self.policy(call.principal.workspace)
        ledger = _Ledger(self, call, policy)
        try:
            requested = model
            before = ledger.decision = self._classify(call, ledger, policy)
            targets = self.routing.candidates(requested, "transcription")
            plan = self.routing.plan(targets, before.level)
            if not plan.routes:
                raise self._denied(requested, before, plan.excluded)
            subjects = self.subjects(call.principal)
            if subjects:
                ledger.reservation = await self.limiter.admit(subjects, 0)
            target = ledger.target = plan.routes[0]
            await ledger.intend(target)
            started = time.perf_counter()
            transcript = await self.routing.providers[target.provider].transcribe(
                target.model, audio, options
            )
            ledger.upstream_seconds = time.perf_counter() - started
            call.body = {**call.body, "input": transcript.text}
            decision = ledger.decision = self._classify(call, ledger, policy)
            for finding in decision.findings:
                self.metrics.detector_findings.labels(finding.type).inc()
            ledger.response_text = transcript.text
            ledger.completion_tokens = len(transcript.text) // 4
            ledger.audio_seconds = max(float(transcript.duration or 0.0), 0.0)
            headers = ledger.headers()
            await ledger.close("ok", 200)
            return transcript, headers
        except EnclaveError as error:
            error.headers = {**error.headers, **ledger.partial_headers()}
            outcome = "denied" if isinstance(error, PolicyDenied) else "error"
            await ledger.close(outcome, error.status_code, error)
            raise
        except asyncio.CancelledError:
            await ledger.close("cancelled", 499)
            raise

    def _classify(self, call: Call, ledger: _Ledger, policy: WorkspaceConfig) -> Decision:
        """Build what may be forwarded, then classify exactly that."""
        outbound = ledger.outbound = Outbound(call.capability, call.body)
        return self.classifier.classify(
            workspace=call.principal.workspace,
            floor=policy.classification or self.routing.levels.lowest,
            header=call.classification_header,
            texts=outbound.strings,
            knowledge=call.knowledge,
            raised=call.raised,
        )

    async def _handle(self, call: Call, ledger: _Ledger, policy: WorkspaceConfig) -> Answer:
        requested = str(call.body.get("model", ""))
        decision = ledger.decision = self._classify(call, ledger, policy)
        for finding in decision.findings:
            self.metrics.detector_findings.labels(finding.type).inc()
        replicas = self.routing.replicas
        deployed = replicas is not None and requested in replicas.deployed()
        if replicas is not None and deployed:
            await replicas.ready(requested)  # a keep_alive model loads; unplaced: 503
        targets = self.routing.candidates(requested, call.capability)
        if replicas is not None and deployed:
            targets = replicas.order(targets, conversation_key(call.body))
        plan = self.routing.plan(targets, decision.level)
        if not plan.routes:
            raise self._denied(requested, decision, plan.excluded)
        subjects = self.subjects(call.principal)
        if subjects:
            assert ledger.outbound is not None
            ledger.reservation = await self.limiter.admit(
                subjects, self._estimate(call, ledger.outbound.strings)
            )
        failures: list[str] = []
        errors: list[EnclaveError] = []
        for target in plan.routes:
            breaker = self.routing.breakers[target.provider]
            if breaker.is_down():
                failures.append(f"{target.qualified}: down (circuit open)")
                continue
            if ledger.intent is None:
                await ledger.intend(target)
            breaker.attempt()
            ledger.target = target
            try:
                answer = await self._dispatch(call, ledger, target)
            except (UpstreamUnavailable, QueueFull) as exc:
                if isinstance(exc, UpstreamUnavailable):
                    breaker.failure()
                failures.append(f"{target.qualified}: {exc.message}")
                errors.append(exc)
                continue
            breaker.success()
            return answer
        ledger.target = None
        if (
            errors
            and len(errors) == len(failures)
            and all(isinstance(e, QueueFull) for e in errors)
        ):
            raise errors[0]  # every eligible provider is merely busy: 429 with Retry-After
        raise UpstreamUnavailable(
            "Every provider cleared for this request failed: " + "; ".join(failures)
        )

    def _denied(
        self, requested: str, decision: Decision, excluded: tuple[tuple[Target, str], ...]
    ) -> PolicyDenied:
        why = "; ".join(f"{target.qualified} {reason}" for target, reason in excluded)
        return PolicyDenied(
            f"No provider cleared for '{decision.level}' data can serve '{requested}'. "
            f"The request is '{decision.level}' because: {', '.join(decision.reasons)}. "
            f"Excluded: {why or 'none configured'}."
        )

    @staticmethod
    def _estimate(call: Call, texts: list[str]) -> int:
        chars = sum(len(text) for text in texts)
        limit = call.body.get("max_completion_tokens") or call.body.get("max_tokens") or 0
        return chars // 4 + (limit if isinstance(limit, int) else 0)

    # -- dispatch --------------------------------------------------------

    async def _dispatch(self, call: Call, ledger: _Ledger, target: Target) -> Answer:
        provider = self.routing.providers[target.provider]
        if isinstance(provider, OpenAIUpstream):
            return await self._upstream(call, ledger, provider, target)
        return await self._local(call, ledger, target)

    async def _upstream(
        self, call: Call, ledger: _Ledger, provider: OpenAIUpstream, target: Target
    ) -> Answer:
        assert ledger.outbound is not None
        # Only what was scanned leaves: the allowlisted fields (never ``enclave``).
        body = dict(ledger.outbound.body)
        body["model"] = provider.upstream_model(target.model)
        wants_usage = False
        if call.streaming:
            options = body.get("stream_options")
            wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            # Always ask for usage: limits and the ledger need it; the chunk is
            # dropped again below when the client did not ask for it.
            body["stream_options"] = {**(options or {}), "include_usage": True}
        started = time.perf_counter()
        reply = await provider.send(ENDPOINT_PATHS[call.capability], body)
        try:
            if not call.streaming or reply.status != 200:
                try:
                    data = await reply.response.read()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    raise UpstreamUnavailable(
                        f"Provider '{provider.name}' failed while answering ({type(exc).__name__})."
                    ) from None
                ledger.upstream_seconds = time.perf_counter() - started
                reply.close()  # the body is read: free the provider's slot
                return await self._upstream_body(call, ledger, reply.status, data)
            chunks = reply.response.content.iter_any()
            try:
                first = await anext(chunks)
            except (aiohttp.ClientError, TimeoutError, OSError, StopAsyncIteration) as exc:
                raise UpstreamUnavailable(
                    f"Provider '{provider.name}' ended the stream before any data "
                    f"({type(exc).__name__})."
                ) from None
            ledger.upstream_seconds = time.perf_counter() - started
        except BaseException:
            reply.close()
            raise
        relay = _StreamRelay(ledger, reply, first, chunks, wants_usage, provider.name)
        return Answer(200, ledger.headers(), stream=relay.run(), media_type="text/event-stream")

    async def _upstream_body(self, call: Call, ledger: _Ledger, status: int, data: bytes) -> Answer:
        outcome = "ok" if status < 400 else "error"
        try:
            parsed = orjson.loads(data)
            usage = parsed.get("usage") if isinstance(parsed, dict) else None
        except orjson.JSONDecodeError:
            parsed, usage = None, None
        if isinstance(usage, dict):
            ledger.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            ledger.completion_tokens = int(usage.get("completion_tokens") or 0)
        if ledger.policy.log_content and isinstance(parsed, dict):
            ledger.response_text = _response_text(parsed)
        headers = ledger.headers()
        await ledger.close(outcome, status)
        return Answer(status, headers, body=data)

    async def _local(self, call: Call, ledger: _Ledger, target: Target) -> Answer:
        provider = self.routing.providers[target.provider]
        card = self.routing.cards[(target.provider, target.model)]
        tenant = call.principal.tenant
        wire = call.wire
        if isinstance(wire, EmbeddingRequest):
            result = await self.inference.embed(
                wire.inputs(), provider, card, dimensions=wire.dimensions
            )
            ledger.prompt_tokens = result.prompt_tokens
            body = orjson.dumps(responses.embeddings_body(card.id, result, wire.encoding_format))
            headers = ledger.headers()
            await ledger.close("ok", 200)
            return Answer(200, headers, body=body)
        if isinstance(wire, ChatCompletionRequest):
            generations = [
                await self.inference.generate(wire.to_generation_request(tenant), provider, card)
            ]
        else:
            generations = []
            try:
                for prompt in wire.prompts():
                    request = wire.to_generation_request(prompt, tenant)
                    generations.append(await self.inference.generate(request, provider, card))
            except BaseException:
                for generation in generations:
                    await generation.aclose()
                raise
        if call.streaming:
            if isinstance(wire, ChatCompletionRequest):
                events = responses.chat_completion_events(
                    generations[0], include_usage=wire.include_usage
                )
            else:
                echo = wire.prompts() if wire.echo else []
                events = responses.completion_events(
                    generations, echo, include_usage=wire.include_usage
                )
            stream = _local_stream(ledger, events, generations)
            return Answer(200, ledger.headers(), stream=stream, media_type="text/event-stream")
        if isinstance(wire, ChatCompletionRequest):
            payload = await responses.chat_completion_body(generations[0])
        else:
            payload = await responses.completion_body(
                generations, wire.prompts() if wire.echo else []
            )
        _count(ledger, generations)
        if ledger.policy.log_content:
            ledger.response_text = _response_text(payload)
        headers = ledger.headers()
        await ledger.close("ok", 200)
        return Answer(200, headers, body=orjson.dumps(payload))


def _count(ledger: _Ledger, generations: list[Generation]) -> None:
    for generation in generations:
        if generation.usage is not None:
            ledger.prompt_tokens += generation.usage.prompt_tokens
            ledger.completion_tokens += generation.usage.completion_tokens


def _response_text(payload: dict[str, Any]) -> str:
    parts = []
    for choice in payload.get("choices") or ():
        message = choice.get("message") or {}
        parts.append(str(message.get("content") or choice.get("text") or ""))
    return "\n".join(parts)


async def _local_stream(
    ledger: _Ledger, events: AsyncIterator[bytes], generations: list[Generation]
) -> AsyncIterator[bytes]:
    outcome, status = "cancelled", 499
    closing = False
    end = b""  # [DONE] or the error event: sent once the entry is committed
    try:
        async for event in events:
            if event.startswith(STREAM_ENDS) or end:
                end += event
            else:
                yield event
        finished = all(generation.usage is not None for generation in generations)
        outcome, status = ("ok", 200) if finished else ("error", 200)
        closing = True
        _count(ledger, generations)
        try:
            await ledger.close(outcome, status)
        except ServiceUnavailable as failure:
            end = responses.sse_error(failure)
        if end:
            yield end
    finally:
        if not closing:
            _count(ledger, generations)
            with contextlib.suppress(ServiceUnavailable):  # nobody is left to tell
                await ledger.close(outcome, status)


class _StreamRelay:
    """Passes an upstream's SSE bytes through as they arrive, and accounts for them.

    Events are split on blank lines only to read the final usage chunk (and to
    drop it when the client did not ask for it); everything else is forwarded
    byte for byte, without waiting for more.
    """

    def __init__(
        self,
        ledger: _Ledger,
        reply: UpstreamReply,
        first: bytes,
        chunks: AsyncIterator[bytes],
        wants_usage: bool,
        provider: str,
    ) -> None:
        self.ledger = ledger
        self.reply = reply
        self.first = first
        self.chunks = chunks
        self.wants_usage = wants_usage
        self.provider = provider
        self.pending = b""
        self.done = False
        self.deltas = 0
        # The usage chunk, [DONE] and anything after: sent once the entry is committed.
        self.held = b""

    def _filter(self, data: bytes) -> bytes:
        """Return the complete events in ``data``; an incomplete trailing one waits."""
        if self.pending:
            data, self.pending = self.pending + data, b""
        cut = data.rfind(b"\n\n") + 2
        if cut == 1:  # no event boundary yet
            self.pending = data
            return b""
        complete, self.pending = data[:cut], data[cut:]
        if self.done:
            self.held += complete
            return b""
        if b'"usage"' not in complete:  # the common case: forward as is
            self.deltas += complete.count(b"data: {")
            at = complete.find(b"data: [DONE]")
            if at < 0:
                return complete
            self.done = True
            self.held += complete[at:]
            return complete[:at]
        kept = []
        for event in complete.split(b"\n\n")[:-1]:
            event += b"\n\n"
            if self.done or event.startswith(b"data: [DONE]"):
                self.done = True
                self.held += event
                continue
            if b'"usage"' in event and event.startswith(b"data: "):
                if self._read_usage(event[6:-2]):  # a usage-only chunk, the last one
                    if self.wants_usage:
                        self.held += event
                    continue
            else:
                self.deltas += 1
            kept.append(event)
        return b"".join(kept)

    def _read_usage(self, payload: bytes) -> bool:
        """Record usage from a chunk; True if it is a usage-only chunk."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if isinstance(usage, dict):
            self.ledger.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.ledger.completion_tokens = int(usage.get("completion_tokens") or 0)
        return isinstance(usage, dict) and not chunk.get("choices")

    async def run(self) -> AsyncIterator[bytes]:
        outcome, status, error = "cancelled", 499, None
        closing = False
        try:
            out = self._filter(self.first)
            if out:
                yield out
            try:
                async for data in self.chunks:
                    out = self._filter(data)
                    if out:
                        yield out
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = UpstreamUnavailable(
                    f"Provider '{self.provider}' failed mid-stream ({type(exc).__name__}); "
                    "the answer is incomplete.",
                    code="upstream_disconnected",
                )
            if error is None and not self.done:
                error = UpstreamUnavailable(
                    f"Provider '{self.provider}' ended the stream early; the answer is incomplete.",
                    code="upstream_disconnected",
                )
            if error is not None:
                outcome, status = "error", 200
                self.ledger.gateway.routing.breakers[self.provider].failure()
                end = responses.sse_error(error)
            else:
                outcome, status = "ok", 200
                end = self.held
            closing = True
            self.reply.close()
            self._count_deltas()
            try:
                await self.ledger.close(outcome, status, error)
            except ServiceUnavailable as failure:
                end = responses.sse_error(failure)  # in place of [DONE]
            if end:
                yield end
        finally:
            self.reply.close()
            if not closing:
                self._count_deltas()
                with contextlib.suppress(ServiceUnavailable):  # nobody is left to tell
                    await self.ledger.close(outcome, status, error)

    def _count_deltas(self) -> None:
        if not self.ledger.completion_tokens and self.deltas:
            self.ledger.completion_tokens = self.deltas
