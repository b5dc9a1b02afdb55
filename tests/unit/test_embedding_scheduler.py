"""The embedding provider's scheduler: cut before tokenising, queries before bulk
work, and nothing more encoded for a caller that has gone.

A fake encoder stands in for sentence-transformers (each batch takes 20 ms),
so these run in a second; tests/integration/test_embedding_limits.py checks
the real model.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from enclave.providers.sentence_transformers import BATCH_SIZE, SentenceTransformersProvider
from enclave.settings import ModelConfig

BATCH_SECONDS = 0.02


class FakeEncoder:
    max_seq_length = 256

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.longest_seen = 0

    def tokenizer(self, inputs: list[str], **_: Any) -> dict[str, list[list[int]]]:
        self.longest_seen = max(self.longest_seen, *(len(text) for text in inputs))
        return {"input_ids": [[0] * min(len(text), self.max_seq_length) for text in inputs]}

    def encode(self, inputs: list[str], **_: Any) -> np.ndarray:
        self.batches.append(list(inputs))
        time.sleep(BATCH_SECONDS)
        return np.ones((len(inputs), 4), dtype=np.float32)


def provider_with(encoder: FakeEncoder) -> SentenceTransformersProvider:
    config = ModelConfig(name="mini", path="builtin:all-minilm-l6-v2", n_ctx=256)
    provider = SentenceTransformersProvider("embed", [config], queue_size=64, chars_per_token=8)
    provider._loaded["mini"] = encoder
    return provider


def test_inputs_are_cut_to_the_context_before_tokenising() -> None:
    encoder = FakeEncoder()
    provider = provider_with(encoder)
    result = asyncio.run(provider.embed("mini", ["x" * 8_000_000, "short"]))
    assert len(result.vectors) == 2
    assert encoder.longest_seen == 256 * 8
    assert encoder.batches[0][1] == "short"


def test_a_query_is_not_starved_by_bulk_embeds() -> None:
    encoder = FakeEncoder()
    provider = provider_with(encoder)
    bulk = ["chunk"] * (BATCH_SIZE * 20)  # 20 batches each, 0.4 s

    async def scenario() -> float:
        jobs = [
            asyncio.create_task(provider.embed("mini", bulk, priority="bulk")) for _ in range(3)
        ]
        await asyncio.sleep(BATCH_SECONDS * 2)
        started = time.perf_counter()
        await provider.embed("mini", ["the question"], priority="interactive")
        waited = time.perf_counter() - started
        await asyncio.gather(*jobs)
        await provider.close()
        return waited

    waited = asyncio.run(scenario())
    # At most the batch already running, then the query's own: not 60 bulk batches (1.2 s).
    assert waited < BATCH_SECONDS * 6, waited
    assert len(encoder.batches) == 3 * 20 + 1


def test_bulk_requests_take_turns() -> None:
    encoder = FakeEncoder()
    provider = provider_with(encoder)

    async def scenario() -> None:
        first = asyncio.create_task(provider.embed("mini", ["a"] * BATCH_SIZE * 4, priority="bulk"))
        await asyncio.sleep(0)
        second = asyncio.create_task(
            provider.embed("mini", ["b"] * BATCH_SIZE * 4, priority="bulk")
        )
        await asyncio.gather(first, second)
        await provider.close()

    asyncio.run(scenario())
    order = "".join(batch[0] for batch in encoder.batches)
    assert order.startswith("ab") and "abab" in order


def test_nothing_more_is_encoded_once_the_caller_has_gone() -> None:
    encoder = FakeEncoder()
    provider = provider_with(encoder)

    async def scenario() -> int:
        job = asyncio.create_task(provider.embed("mini", ["c"] * BATCH_SIZE * 64, priority="bulk"))
        await asyncio.sleep(BATCH_SECONDS * 3)
        job.cancel()
        await asyncio.sleep(BATCH_SECONDS * 5)
        encoded = len(encoder.batches)
        await asyncio.sleep(BATCH_SECONDS * 5)
        assert len(encoder.batches) == encoded  # stopped
        await provider.close()
        return encoded

    encoded = asyncio.run(scenario())
    assert encoded < 10  # of 64


def test_batches_hold_inputs_of_similar_length_and_vectors_keep_their_order() -> None:
    class Echo(FakeEncoder):
        def encode(self, inputs: list[str], **_: Any) -> np.ndarray:
            self.batches.append(list(inputs))
            return np.array([[float(len(text))] for text in inputs], dtype=np.float32)

    encoder = Echo()
    provider = provider_with(encoder)
    texts = ["y" * (1 + (i * 37) % 200) for i in range(BATCH_SIZE * 3)]
    result = asyncio.run(provider.embed("mini", texts, priority="bulk"))
    assert [vector[0] for vector in result.vectors] == [float(len(text)) for text in texts]
    spans = [max(map(len, batch)) - min(map(len, batch)) for batch in encoder.batches]
    assert len(encoder.batches) == 3 and max(spans) < 100  # unsorted batches span ~200
