"""Fill-in-the-middle prompt assembly (the model-free part of providers/infill.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from enclave.errors import InvalidRequest
from enclave.providers import infill
from enclave.providers.infill import FimTokens, infill_tokens, tokenize_infill

FIM = FimTokens(prefix=900, suffix=901, middle=902)


def test_prefix_suffix_middle_order_with_bos() -> None:
    assert infill_tokens([1, 2], [3], FIM, bos=7) == [7, 900, 1, 2, 901, 3, 902]


def test_no_bos_and_empty_parts() -> None:
    assert infill_tokens([], [], FIM, bos=None) == [900, 901, 902]


class FakeLlama:
    """Tokenises one byte per token; the vocabulary pointer is a stand-in."""

    def __init__(self) -> None:
        self._model = SimpleNamespace(vocab=object())
        self.special: list[bool] = []

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        assert not add_bos
        self.special.append(special)
        return list(text)


def fake_vocab(monkeypatch: pytest.MonkeyPatch, fim: tuple[int, int, int], bos: int) -> None:
    names = ("llama_vocab_fim_pre", "llama_vocab_fim_suf", "llama_vocab_fim_mid")
    for name, token in zip(names, fim, strict=True):
        monkeypatch.setattr(infill.llama_cpp, name, lambda _vocab, t=token: t)
    monkeypatch.setattr(infill.llama_cpp, "llama_vocab_bos", lambda _vocab: bos)
    monkeypatch.setattr(infill.llama_cpp, "llama_vocab_get_add_bos", lambda _vocab: True)


def test_tokenize_infill_uses_the_vocabularys_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vocab(monkeypatch, (900, 901, 902), bos=1)
    llama: Any = FakeLlama()
    tokens = tokenize_infill(llama, "coder", "ab", "c")
    assert tokens == [1, 900, ord("a"), ord("b"), 901, ord("c"), 902]
    assert llama.special == [False, False]  # a marker typed in the code stays text


def test_a_model_without_fim_tokens_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vocab(monkeypatch, (-1, -1, -1), bos=1)
    with pytest.raises(InvalidRequest) as refused:
        tokenize_infill(FakeLlama(), "smollm2-135m", "def f(", "):")  # type: ignore[arg-type]
    assert "smollm2-135m" in refused.value.message and "fill-in-the-middle" in refused.value.message
    assert refused.value.param == "suffix"
