"""Fill-in-the-middle with the embedded model: SmolLM2 has no FIM tokens, so a suffix
is refused with a 400 that names the model, before anything is queued."""

from __future__ import annotations

import pytest

from enclave.errors import InvalidRequest
from enclave.providers.base import GenerationRequest, SamplingParams
from enclave.providers.infill import FimTokens
from enclave.providers.llamacpp import LlamaCppProvider
from tests.integration.conftest import Loop

pytestmark = pytest.mark.model


def test_smollm2_has_no_fim_tokens(llama: LlamaCppProvider) -> None:
    assert FimTokens.of(llama.model("smollm2-135m").tokenizer) is None


def test_a_suffix_is_refused_naming_the_model(loop: Loop, llama: LlamaCppProvider) -> None:
    request = GenerationRequest(
        model="smollm2-135m",
        prompt="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )
    with pytest.raises(InvalidRequest) as refused:
        loop.run(llama.generate(request))
    assert refused.value.status_code == 400 and refused.value.param == "suffix"
    assert "'smollm2-135m'" in refused.value.message


def test_without_a_suffix_the_prompt_completes(loop: Loop, llama: LlamaCppProvider) -> None:
    request = GenerationRequest(
        model="smollm2-135m",
        prompt="def add(a, b):\n    return ",
        sampling=SamplingParams(temperature=0, max_tokens=4),
    )

    async def drain() -> int:
        return len([event async for event in await llama.generate(request)])

    assert loop.run(drain()) > 0
