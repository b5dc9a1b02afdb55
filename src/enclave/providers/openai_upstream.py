"""OpenAI-compatible upstreams (vLLM, Ollama, llama-server, cloud APIs), over aiohttp.

The gateway forwards the client's JSON body with only ``model`` rewritten and
passes the upstream's bytes back, so an upstream costs one HTTP round trip
and no re-encoding. aiohttp is used because it spends about a tenth of the CPU
per request that httpx does, which is most of the gateway's budget.

:meth:`OpenAIUpstream.send` is the admission step of the provider contract
(see :mod:`enclave.providers.base`): it returns once the upstream has sent its
status line and headers. Failures there raise :class:`UpstreamUnavailable`,
which the router treats as "try the next eligible provider"; nothing has
reached the client yet. A 4xx that is the client's fault (400, 413, 422) comes
back as a response for the caller to pass on.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from enclave.errors import UpstreamUnavailable
from enclave.providers.base import Capabilities, Health, ModelCard, Provider
from enclave.settings import ProviderConfig, resolve_secret

# Upstream statuses that are the client's fault: passed on, never retried elsewhere.
CLIENT_ERRORS = frozenset({400, 413, 422})


class UpstreamReply:
    """An upstream response whose headers have arrived. ``close()`` frees its slot."""

    __slots__ = ("_provider", "response")

    def __init__(self, response: aiohttp.ClientResponse, provider: OpenAIUpstream) -> None:
        self.response = response
        self._provider: OpenAIUpstream | None = provider

    @property
    def status(self) -> int:
        return self.response.status

    def close(self) -> None:
        if self._provider is not None:
            self._provider.in_flight -= 1
            self._provider = None
        self.response.release()


class OpenAIUpstream(Provider):
    """One OpenAI-compatible base URL and the models it serves."""

    def __init__(self, config: ProviderConfig) -> None:
        assert config.base_url is not None
        self.name = config.name
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.in_flight = 0
        self.sent = 0
        self.failures = 0
        self._api_key = resolve_secret(config.api_key) if config.api_key else None
        self._session: aiohttp.ClientSession | None = None
        self._cards = [
            ModelCard(
                id=model.name,
                provider=config.name,
                capabilities=Capabilities(
                    chat=not model.embeddings,
                    completion=not model.embeddings,
                    embeddings=model.embeddings,
                    tools=not model.embeddings,
                    json_schema=not model.embeddings,
                    context_length=model.n_ctx,
                ),
                created=int(time.time()),
            )
            for model in config.models
        ]
        self._upstream_names = {
            model.name: model.upstream_name or model.name for model in config.models
        }
        # By the name sent upstream: a generation request without a limit gets the model's.
        self._max_tokens_default = {
            model.upstream_name or model.name: model.max_tokens_default
            for model in config.models
            if model.max_tokens_default is not None
        }

    async def start(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=self.config.max_concurrency, keepalive_timeout=30, ttl_dns_cache=300
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.config.connect_timeout_s,
                sock_read=self.config.timeout_s,
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def models(self) -> list[ModelCard]:
        return list(self._cards)

    def upstream_model(self, model: str) -> str:
        return self._upstream_names[model]

    async def send(self, endpoint: str, body: dict[str, Any]) -> UpstreamReply:
        """POST ``body`` to ``endpoint`` (e.g. ``/chat/completions``) and await the headers.

        The caller owns the reply and must ``close()`` it.
        """
        if self._session is None:
            raise UpstreamUnavailable(f"Provider '{self.name}' is not started.")
        default = self._max_tokens_default.get(body.get("model", ""))
        if (
            default is not None
            and endpoint in ("/chat/completions", "/completions")
            and body.get("max_tokens") is None
            and body.get("max_completion_tokens") is None
        ):
            body = {**body, "max_tokens": default}
        self.in_flight += 1
        self.sent += 1
        try:
            response = await self._session.post(self.base_url + endpoint, data=orjson.dumps(body))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.in_flight -= 1
            self.failures += 1
            raise UpstreamUnavailable(
                f"Provider '{self.name}' is unreachable ({type(exc).__name__})."
            ) from None
        except BaseException:
            self.in_flight -= 1
            raise
        reply = UpstreamReply(response, self)
        if response.status < 400 or response.status in CLIENT_ERRORS:
            return reply
        self.failures += 1
        reply.close()
        raise UpstreamUnavailable(f"Provider '{self.name}' answered HTTP {response.status}.")

    def is_busy(self) -> bool:
        return self.in_flight >= self.config.max_concurrency

    async def health(self) -> Health:
        if self._session is None:
            return Health(ok=False, detail="not started")
        try:
            async with self._session.get(
                self.base_url + "/models", timeout=aiohttp.ClientTimeout(total=3)
            ) as response:
                ok = response.status == 200
                return Health(ok=ok, detail="" if ok else f"HTTP {response.status}", queue_depth=0)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Health(ok=False, detail=f"unreachable ({type(exc).__name__})")

    def describe(self) -> dict[str, Any]:
        return {
            "type": "openai",
            "base_url": self.base_url,
            "in_flight": self.in_flight,
            "requests": self.sent,
            "failures": self.failures,
        }
