"""Truncate before tokenising, with the real models.

An 8 MB input must cost what a context's worth of text costs: the embedder cuts
it before its tokenizer sees it (and the vector is that of the cut text), and
llama.cpp refuses an 8 MB prompt with context_length_exceeded without
tokenising it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from enclave.errors import InvalidRequest
from enclave.providers.base import ChatMessage, GenerationRequest
from enclave.providers.llamacpp import LlamaCppProvider
from enclave.providers.sentence_transformers import SentenceTransformersProvider
from enclave.settings import ModelConfig
from tests.integration.conftest import Loop

MB8 = 8 * 1024 * 1024


def test_an_8mb_embedding_input_is_cut_before_tokenising(loop: Loop) -> None:
    config = ModelConfig(name="mini", path="builtin:all-minilm-l6-v2", n_ctx=256)
    provider = SentenceTransformersProvider("embed", [config], queue_size=8)
    loop.run(provider.start())
    try:
        text = "The quick brown fox jumps over the lazy dog. " * (MB8 // 45)
        started = time.perf_counter()
        huge = loop.run(provider.embed("mini", [text]))
        took = time.perf_counter() - started
        cut = loop.run(provider.embed("mini", [text[: 256 * 8]]))
    finally:
        loop.run(provider.close())
    assert took < 2.0, took  # was 23 s: the whole string went through the tokenizer
    assert huge.prompt_tokens == cut.prompt_tokens == 256
    assert np.allclose(huge.vectors[0], cut.vectors[0], atol=1e-5)


def test_an_8mb_prompt_is_refused_without_tokenising(llama: LlamaCppProvider, loop: Loop) -> None:
    request = GenerationRequest(
        model="smollm2-135m", messages=[ChatMessage(role="user", content="w " * (MB8 // 2))]
    )
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as refused:
        loop.run(llama.generate(request))
    assert time.perf_counter() - started < 0.5  # was 10 s
    assert refused.value.code == "context_length_exceeded"
    assert "input_limits.chars_per_token" in refused.value.message
