"""A provider that replays scripted answers: predictable, instant, CPU-free."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from enclave.errors import ModelNotFound, QueueFull
from enclave.providers.base import (
    Capabilities,
    EmbeddingResult,
    EmbedPriority,
    Finished,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    Health,
    ModelCard,
    Provider,
    TextDelta,
    Usage,
)


@dataclass
class Script:
    """What the fake model says: ``words`` streamed one per event, or what
    ``respond`` returns for the request (e.g. a decision that depends on its schema).

    ``fail_after`` raises ``error`` after that many words (a provider dying
    mid-stream); ``delay`` sleeps between words.
    """

    words: Sequence[str] = ("Hello", " from", " the", " script", ".")
    delay: float = 0.0
    fail_after: int | None = None
    error: BaseException | None = None
    # When set, the answer to each request: its text, streamed as one word.
    respond: Callable[[GenerationRequest], str] | None = None


class _ScriptedStream(GenerationStream):
    def __init__(self, provider: ScriptedProvider, request: GenerationRequest) -> None:
        self._provider = provider
        self._request = request
        self.closed = False

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        script = self._provider.script
        self._provider.in_flight += 1
        try:
            emitted = 0
            words = [script.respond(self._request)] if script.respond else script.words
            for word in words:
                if script.fail_after is not None and emitted >= script.fail_after:
                    raise script.error or RuntimeError("scripted failure")
                if script.delay:
                    await asyncio.sleep(script.delay)
                if self.closed:
                    return
                emitted += 1
                yield TextDelta(word)
            prompt = len(self._request.messages) or 1
            yield Finished("stop", Usage(prompt_tokens=prompt, completion_tokens=emitted))
        finally:
            self._provider.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


WORD_DIMENSIONS = 256


def word_vector(text: str) -> list[float]:
    """A bag of hashed, lower-cased words: texts that share words are similar."""
    vector = [0.0] * WORD_DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        if len(word) > 2:
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            vector[int.from_bytes(digest) % WORD_DIMENSIONS] += 1.0
    return vector


class ScriptedProvider(Provider):
    """Serves a chat model ``scripted`` and two embedding models.

    ``scripted-embed`` gives three numbers per text (its length, 1, 0);
    ``scripted-words`` a hashed bag of words (:func:`word_vector`), for
    knowledge tests that need similar texts to be similar without a model.
    """

    def __init__(self, name: str = "scripted", *, script: Script | None = None) -> None:
        self.name = name
        self.script = script or Script()
        self.requests: list[GenerationRequest] = []
        self.in_flight = 0
        self.capacity: int | None = None

    def models(self) -> list[ModelCard]:
        return [
            ModelCard("scripted", self.name, Capabilities(chat=True, completion=True)),
            ModelCard(
                "scripted-embed",
                self.name,
                Capabilities(embeddings=True, embedding_dimensions=3),
            ),
            ModelCard(
                "scripted-words",
                self.name,
                Capabilities(embeddings=True, embedding_dimensions=WORD_DIMENSIONS),
            ),
        ]

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        if request.model != "scripted":
            raise ModelNotFound(request.model)
        if self.capacity is not None and self.in_flight >= self.capacity:
            raise QueueFull("The scripted model is busy.", retry_after=2)
        self.requests.append(request)
        return _ScriptedStream(self, request)

    async def embed(
        self, model: str, inputs: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> EmbeddingResult:
        if model == "scripted-words":
            vectors = [word_vector(text) for text in inputs]
        else:
            vectors = [[float(len(text)), 1.0, 0.0] for text in inputs]
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(t.split()) for t in inputs))

    async def health(self) -> Health:
        return Health(ok=True)


class ScriptedDeployment(ScriptedProvider):
    """The scripted chat model under a deployment's model name.

    The test engine of a joined runner (``enclave runner --join ... --scripted-engine``):
    every load becomes one of these, so placement and routing across runner
    processes are tested without loading a model.
    """

    def __init__(self, model: str, *, script: Script | None = None) -> None:
        super().__init__(model, script=script)

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.name, self.name, Capabilities(chat=True, completion=True))]

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        if request.model != self.name:
            raise ModelNotFound(request.model)
        return await super().generate(replace(request, model="scripted"))
