"""Fill-in-the-middle prompts for models that were trained with FIM tokens.

A code model trained for infilling marks the text before the cursor, the text
after it and the place to write with three special tokens (``<fim_prefix>``,
``<fim_suffix>``, ``<fim_middle>`` in StarCoder's vocabulary,
``<|fim_prefix|>``... in Qwen2.5-Coder's, ``▁<PRE>``... in CodeLlama's).
llama.cpp reads them from the GGUF metadata and exposes them as
``llama_vocab_fim_pre/suf/mid``; a model without them cannot infill, and the
request is refused rather than answered with a plain continuation.

The prompt is prefix-suffix-middle order, the one these models share and the
one llama.cpp's own server sends::

    [BOS] <PRE> prefix-tokens <SUF> suffix-tokens <MID>
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
from llama_cpp import Llama

from enclave.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class FimTokens:
    """The ids of a vocabulary's prefix, suffix and middle markers."""

    prefix: int
    suffix: int
    middle: int

    @classmethod
    def of(cls, llama: Llama) -> FimTokens | None:
        """The model's FIM tokens, or None when its vocabulary lacks any of them."""
        vocab = llama._model.vocab
        found = cls(
            llama_cpp.llama_vocab_fim_pre(vocab),
            llama_cpp.llama_vocab_fim_suf(vocab),
            llama_cpp.llama_vocab_fim_mid(vocab),
        )
        return found if min(found.prefix, found.suffix, found.middle) >= 0 else None


def infill_tokens(
    prefix: Sequence[int], suffix: Sequence[int], fim: FimTokens, bos: int | None
) -> list[int]:
    """The prompt tokens that ask for the text between ``prefix`` and ``suffix``."""
    head = [bos] if bos is not None else []
    return [*head, fim.prefix, *prefix, fim.suffix, *suffix, fim.middle]


def no_infill(model: str) -> InvalidRequest:
    return InvalidRequest(
        f"The model '{model}' cannot fill in the middle: its vocabulary has no "
        "fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, <fim_middle>). "
        "Omit suffix, or use a code model trained for infilling "
        "(Qwen2.5-Coder, StarCoder2, CodeLlama and the like).",
        param="suffix",
        code="suffix_not_supported",
    )


def tokenize_infill(llama: Llama, model: str, prompt: str, suffix: str) -> list[int]:
    """Tokenise ``prompt`` and ``suffix`` into one FIM prompt for ``llama``.

    Raises InvalidRequest naming ``model`` when it has no FIM tokens. The text
    is tokenised with ``special=False`` so a marker typed into the code stays text.
    """
    fim = FimTokens.of(llama)
    if fim is None:
        raise no_infill(model)
    vocab = llama._model.vocab
    bos = llama_cpp.llama_vocab_bos(vocab)
    adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and bos >= 0
    return infill_tokens(
        llama.tokenize(prompt.encode(), add_bos=False, special=False),
        llama.tokenize(suffix.encode(), add_bos=False, special=False),
        fim,
        bos if adds_bos else None,
    )
