"""Every variant spelling of a valid value is found; disguising clean text finds nothing.

The values and spellings come from :mod:`enclave.testing.detector_variants`,
which ``bench/detectors.py`` uses for its detection-rate table. Hypothesis
drives the generators through ``st.randoms()``, so a failure shrinks to one
seed and prints the request that got through.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.gateway.detectors import DetectorSet, Finding
from enclave.gateway.normalize import normalize
from enclave.testing.detector_variants import CLEAN, FAMILIES, KINDS, disguise, variant

from .test_detectors import BUSINESS_ENGLISH, CODE, TOOL_OUTPUT

ALL = DetectorSet()
FULL_WIDTH = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}
ARABIC_INDIC = {ord("0") + digit: 0x660 + digit for digit in range(10)}
DEVANAGARI = {ord("0") + digit: 0x966 + digit for digit in range(10)}
RANDOMS = st.randoms(use_true_random=False)
variant_settings = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def _applies(family: str, kind: str) -> bool:
    return variant(random.Random(0), family, kind) is not None


CASES = [(family, kind) for family in FAMILIES for kind in KINDS if _applies(family, kind)]


def test_every_family_applies_to_some_kind_and_every_kind_has_families() -> None:
    assert {family for family, _ in CASES} == set(FAMILIES)
    assert {kind for _, kind in CASES} == set(KINDS)


@pytest.mark.parametrize(("family", "kind"), CASES, ids=[f"{f}-{k}" for f, k in CASES])
@variant_settings
@given(rng=RANDOMS)
def test_a_variant_spelling_is_found(family: str, kind: str, rng: random.Random) -> None:
    texts = variant(rng, family, kind)
    assert texts is not None
    types = {finding.type for finding in ALL.scan(texts)}
    assert kind in types, texts


# --- what each family means, spelled out once ----------------------------------------------


@pytest.mark.parametrize(
    ("texts", "kind"),
    [
        (["4111 1111 1111 1111"], "payment_card"),
        (["4111.1111.1111.1111"], "payment_card"),
        (["4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"], "payment_card"),
        (["4111_1111_1111_1111"], "payment_card"),
        (["4111\u00a01111\u202f1111\u20091111"], "payment_card"),
        (["4111\u200b1111\u00ad1111\u200d1111"], "payment_card"),
        (["4111 1111 1111 1111".translate(FULL_WIDTH)], "payment_card"),
        (["4111 1111 1111 1111".translate(ARABIC_INDIC)], "payment_card"),
        (["card 4111 1111", "1111 1111"], "payment_card"),
        (["NDExMSAxMTExIDExMTEgMTExMQ=="], "payment_card"),  # base64
        (["34313131313131313131313131313131"], "payment_card"),  # hex
        (["se45 5000 0000 0583 9825 7466"], "iban"),
        (["SE45-5000-0000-0583-9825-7466"], "iban"),
        (["S\u0415455000000005839825 7466".replace(" ", "")], "iban"),  # Cyrillic Ie
        (["DE89 3704 0044", "0532 0130 00"], "iban"),
        (["811228.9874"], "national_id"),
        (["811228\u20139874"], "national_id"),  # en dash
        (["1 9 8 1 1 2 2 8 9 8 7 4"], "national_id"),
        (["sk-proj-Q7dLm2Zp\u200bX9vR4tK8wN3bY6cF1hJ5sA0e"], "api_key"),
        (["export KEY=sk-proj-Q7dLm2ZpX9vR", "4tK8wN3bY6cF1hJ5sA0e"], "api_key"),
        (
            ["-----BEGIN\u00a0RSA\u00a0PRIVATE KEY-----\n" + "MIIEowIBAAKCAQEAx4Nq" * 6],
            "private_key",
        ),
    ],
)
def test_examples_of_each_family(texts: list[str], kind: str) -> None:
    assert kind in {finding.type for finding in ALL.scan(texts)}


def test_a_split_value_counts_once_and_whole_values_are_not_counted_again() -> None:
    assert ALL.scan(["IBAN SE45 5000", "0000 0583 9825 7466 please"]) == [Finding("iban", 1)]
    # A fragment shaped like a phone number still counts as one, too: it only raises.
    assert Finding("iban", 1) in ALL.scan(["IBAN SE45 5000 0000", "0583 9825 7466 please"])
    assert ALL.scan(["DE89370400440532013000", "GB82WEST12345698765432"]) == [Finding("iban", 2)]


def test_a_third_layer_of_base64_is_not_decoded() -> None:
    import base64

    layered = b"4111 1111 1111 1111"
    for _ in range(3):
        layered = base64.b64encode(layered)
    assert ALL.scan([layered.decode()]) == []
    assert ALL.scan([base64.b64decode(layered).decode()]) == [Finding("payment_card", 1)]


# --- no new false positives ----------------------------------------------------------------

CLEAN_CORPUS = (*CLEAN, BUSINESS_ENGLISH, CODE, TOOL_OUTPUT)


@pytest.mark.parametrize("text", CLEAN_CORPUS, ids=range(len(CLEAN_CORPUS)))
def test_the_clean_corpus_finds_nothing(text: str) -> None:
    assert ALL.scan([text]) == []


@settings(max_examples=200)
@given(rng=RANDOMS, text=st.sampled_from(CLEAN_CORPUS))
def test_normalisation_never_makes_clean_text_detect(rng: random.Random, text: str) -> None:
    disguised = disguise(rng, text)
    assert ALL.scan([disguised]) == []
    # Split into two messages between words: the join is tried glued and with a space.
    # (Split inside a token, half a base64 string looks random: api_key, as before.)
    position = rng.choice([i for i, char in enumerate(disguised) if char.isspace()] or [0])
    assert ALL.scan([disguised[:position], disguised[position:]]) == []


@given(st.text(max_size=200))
def test_normalize_is_idempotent_and_leaves_ascii_alone(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    if text.isascii():
        assert once is text


def test_normalize_folds_what_the_issue_lists() -> None:
    assert normalize("4111\u00a0\u200b1111\u00ad") == "4111 1111"
    assert (
        normalize("\u0664\u0661\u0661\u0661 \uff14\uff11\uff11\uff11 \u096a\u0967\u0967\u0967")
        == "4111 4111 4111"
    )
    assert normalize("811228\u20119874 \u2212 x\u2028") == "811228-9874 - x\n"
    assert normalize("S\u0415\u0434\u04154 окно") == "SEдE4 окно"  # only next to ASCII
    assert normalize("Отчёт окно") == "Отчёт окно"
