"""A provider served by a runner: the control plane's side of the runner protocol.

:class:`RunnerProvider` is an ordinary :class:`~enclave.providers.base.Provider`
whose calls go over HTTP to the same provider running inside a runner process
(see :mod:`enclave.runners.protocol`). Routing, classification, limits, usage
and audit see no difference from an in-process engine.

What a runner's death looks like from here:

* a request *admitted* before the runner died fails where it stands: a
  generation raises :class:`~enclave.errors.ProviderError` from its stream (an
  SSE error event, or a 502 before the first byte of a non-streamed answer);
* a new request while the runner restarts waits up to ``runner.restart_wait_s``
  for it, then fails admission with :class:`~enclave.errors.UpstreamUnavailable`
  (502, and the router may try another cleared provider);
* embeddings are idempotent, so one that broke with its runner is sent again
  once the runner is back (within the same wait).

The runner behind the provider is anything with the :class:`RunnerLink`
shape: the supervised local runner here, a remote one that joined later.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiohttp
import orjson

from enclave.errors import ProviderError, UpstreamUnavailable
from enclave.providers.base import (
    EmbeddingResult,
    EmbedPriority,
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    Health,
    ModelCard,
    Provider,
    Transcript,
    TranscriptionOptions,
)
from enclave.runners.protocol import (
    PREFIX,
    EventLines,
    error_from_wire,
    event_from_wire,
    options_to_wire,
    request_to_wire,
    transcript_from_wire,
)

# Connection problems that mean "the runner is gone", as opposed to an answer.
BROKEN = (aiohttp.ClientError, ConnectionError, asyncio.IncompleteReadError)
# How long a failed request waits to learn why its runner exited (for the message).
EXIT_REASON_WAIT_S = 1.0
HEALTH_TIMEOUT_S = 5.0


class RunnerLink(Protocol):
    """Where a runner is and what state it is in; the supervisor, or a remote registration."""

    name: str
    url: str | None
    token: str
    cards: dict[str, list[ModelCard]]

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def wait_ready(self, timeout: float) -> bool: ...
    async def exit_reason(self, timeout: float) -> str: ...
    def unavailable(self) -> str: ...
    def describe(self) -> dict[str, Any]: ...


class _RunnerStream(GenerationStream):
    def __init__(self, response: aiohttp.ClientResponse, provider: RunnerProvider) -> None:
        self._response = response
        self._provider = provider

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        lines = EventLines()
        try:
            try:
                # One await per network read, not per line: a read that brings
                # several events (a busy loop on either side) yields them all.
                while data := await self._response.content.readany():
                    for item in lines.feed(data):
                        event = event_from_wire(item)
                        yield event
                        if isinstance(event, Finished):
                            return
            except BROKEN:
                pass
            raise await self._provider.broken("while answering")
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        # Closing drops the connection; the runner cancels the generation.
        self._response.close()


class RunnerProvider(Provider):
    """One provider hosted by a runner, reached over the runner protocol."""

    def __init__(
        self,
        name: str,
        runner: RunnerLink,
        *,
        restart_wait_s: float = 20.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.runner = runner
        self.restart_wait_s = restart_wait_s
        self.ssl_context = ssl_context  # verifies a runner that serves HTTPS
        self._session: aiohttp.ClientSession | None = None
        self._state: dict[str, Any] = {}
        self._queues: dict[str, int] = {}

    async def start(self) -> None:
        await self.runner.start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, force_close=False, ssl=self.ssl_context or True
            ),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            trust_env=False,
            json_serialize=lambda data: orjson.dumps(data).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.runner.close()

    def models(self) -> list[ModelCard]:
        return list(self.runner.cards.get(self.name, ()))

    def queue_depth(self) -> dict[str, int]:
        return dict(self._queues)

    def describe(self) -> dict[str, Any]:
        return {"runner": self.runner.describe(), **self._state}

    # -- calls -------------------------------------------------------------------

    async def _url(self, path: str) -> str:
        """The runner's URL for ``path``, waiting for a restarting runner (bounded)."""
        if not await self.runner.wait_ready(self.restart_wait_s) or self.runner.url is None:
            raise UpstreamUnavailable(
                f"Provider '{self.name}' cannot take requests: {self.runner.unavailable()}."
            )
        return f"{self.runner.url}{PREFIX}{path}"

    def hosted(self, model: str) -> str:
        """The name of the provider inside the runner that serves ``model``."""
        return self.name

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.runner.token}"}

    async def broken(self, when: str) -> ProviderError:
        """The error for a request whose connection to the runner broke ``when``."""
        reason = await self.runner.exit_reason(EXIT_REASON_WAIT_S)
        return ProviderError(
            f"The runner serving provider '{self.name}' stopped {when} ({reason}); "
            "it is being restarted. Retry the request.",
            code="runner_unavailable",
        )

    async def _post(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        assert self._session is not None, "start() first"
        url = await self._url(path)
        try:
            return await self._session.post(url, data=orjson.dumps(body), headers=self._headers())
        except BROKEN:
            raise UpstreamUnavailable(
                f"Provider '{self.name}' cannot take requests: {self.runner.unavailable()}."
            ) from None

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        response = await self._post(
            f"/providers/{self.hosted(request.model)}/generate",
            {"request": request_to_wire(request)},
        )
        if response.status != 200:
            try:
                data = orjson.loads(await response.read())
            except (*BROKEN, orjson.JSONDecodeError):
                data = {"error": {"message": f"The runner answered {response.status}."}}
            finally:
                response.release()
            raise error_from_wire(data["error"])
        return _RunnerStream(response, self)

    async def embed(
        self, model: str, inputs: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> EmbeddingResult:
        body = {"model": model, "inputs": list(inputs), "priority": priority}
        deadline = time.monotonic() + self.restart_wait_s
        while True:
            response = await self._post(f"/providers/{self.hosted(model)}/embed", body)
            try:
                data = orjson.loads(await response.read())
            except BROKEN:
                # Embedding is idempotent: once the runner is back, send it again.
                if time.monotonic() >= deadline:
                    raise await self.broken("while embedding") from None
                await self.runner.exit_reason(EXIT_REASON_WAIT_S)
                continue
            finally:
                response.release()
            if response.status != 200:
                raise error_from_wire(data["error"])
            return EmbeddingResult(data["vectors"], int(data["prompt_tokens"]))

    async def transcribe(
        self, model: str, audio: bytes, options: TranscriptionOptions
    ) -> Transcript:
        assert self._session is not None, "start() first"
        url = await self._url(f"/providers/{self.hosted(model)}/transcribe")
        params = {"model": model, "options": orjson.dumps(options_to_wire(options)).decode()}
        try:
            async with self._session.post(
                url, data=audio, params=params, headers=self._headers()
            ) as response:
                data = orjson.loads(await response.read())
        except BROKEN:
            raise await self.broken("while transcribing") from None
        if response.status != 200:
            raise error_from_wire(data["error"])
        return transcript_from_wire(data)

    async def health(self) -> Health:
        url = self.runner.url
        if url is None or self._session is None:
            return Health(ok=False, detail=self.runner.unavailable())
        try:
            async with self._session.get(
                f"{url}{PREFIX}/health",
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
            ) as response:
                report = orjson.loads(await response.read())["providers"][self.name]
        except (*BROKEN, TimeoutError, KeyError, orjson.JSONDecodeError) as exc:
            return Health(ok=False, detail=f"runner not answering ({type(exc).__name__})")
        self._state = report.get("state") or {}
        self._queues = report.get("queues") or {}
        return Health(
            ok=bool(report["ok"]),
            detail=str(report.get("detail") or ""),
            queue_depth=int(report.get("queue_depth") or 0),
        )
