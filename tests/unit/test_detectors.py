"""Sensitive-data detectors: real-format values count, checksum failures and prose do not."""

from __future__ import annotations

import dataclasses
import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.gateway.detectors import (
    DETECTOR_NAMES,
    IBAN_LENGTHS,
    Detector,
    DetectorSet,
    Finding,
    bsn_valid,
    finnish_id_valid,
    iban_check_digits,
    iban_valid,
    looks_random,
    luhn_check_digit,
    luhn_valid,
    norwegian_id_valid,
    swedish_id_valid,
)

ALL = DetectorSet()


def counts(*texts: str) -> dict[str, int]:
    return {finding.type: finding.count for finding in ALL.scan(texts)}


def found(name: str, text: str) -> int:
    return counts(text).get(name, 0)


BUSINESS_ENGLISH = """\
Hi team, following up on yesterday's meeting (15 January 2024) about the quarterly budget
review. We agreed to move the vendor evaluation to next week and to share the draft proposal
with finance before Friday at 10:30. Revenue for Q4 was 1 234 567 SEK, up 12.5% on Q3, and the
board approved a budget of $2,450,000.00 for 2024-2025. Support tickets are down 18% compared
with last year, and release 2.14.3 shipped on 2024-01-12. Please review the attached summary
(pages 3-7), check the state-of-the-art benchmarks in section 4.2, and let me know whether the
internationalization work and the customer-satisfaction survey can start in week 5. Our
responsibilities for the well-documented onboarding process are unchanged. Thanks, and have a
great weekend! Kind regards, Anna (Head of Finance, Northwind Traders AB)
"""

TOOL_OUTPUT = json.dumps(
    {
        "customer": {
            "id": 48213,
            "uuid": "550e8400-e29b-41d4-a716-446655440000",
            "name": "Northwind Traders AB",
            "created": "2019-03-04T09:15:00Z",
            "updated": "2024-01-15 10:30:00",
            "open_orders": 7,
            "credit_limit": 250000.0,
            "balance": 1234567.89,
            "last_invoice": {"number": "INV-2024-0117", "amount": 18450.75, "due": "2024-02-14"},
            "tags": ["priority", "annual-contract"],
            "ip": "192.168.100.200",
            "commit": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
            "homepage": "https://northwind.example/about/company-history?page=2",
            "report": "/var/lib/enclave/reports/2024/q4-summary_final.pdf",
            "timestamp_ms": 1705314600000,
        },
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "version": "1.2.3",
    }
)

CODE = """\
from transformers import Qwen2_5OmniPreTrainedModel, AutoModelForSpeechSeq2Seq

class GatewayRequestClassificationService:
    def classify(self, request):
        self.cross_attn_token_to_image = Sam3TrackerAttention(config)
        path = "/usr/local/lib/python3.11/site-packages/enclave/gateway/detectors.py"
        url = "https://github.com/example-org/enclave/blob/main/src/enclave/gateway/routing.py"
        token = tokenizer.encode(request.prompt)
        api_key = os.environ["OPENAI_API_KEY"]
        password = settings.database_password_reference
        return hashlib.sha256(b"hello").hexdigest()  # 2cf24dba5fb0a30e26e83b2ac5b9e29e
"""


# --- the interface -------------------------------------------------------------------------


def test_detector_names_are_the_configured_ones() -> None:
    assert set(DETECTOR_NAMES) == {
        "api_key",
        "private_key",
        "email",
        "phone",
        "iban",
        "payment_card",
        "national_id",
    }
    assert DetectorSet().names == tuple(sorted(DETECTOR_NAMES))


def test_unknown_detector_is_a_value_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'ssn'") as error:
        DetectorSet(["iban", "ssn"])
    for name in DETECTOR_NAMES:
        assert name in str(error.value)


def test_findings_carry_only_a_type_and_a_count() -> None:
    assert [field.name for field in dataclasses.fields(Finding)] == ["type", "count"]
    text = "IBAN DE89370400440532013000, card 4111111111111111, mail anna@example.com"
    findings = ALL.scan([text])
    assert findings == sorted(findings, key=lambda finding: finding.type)
    assert findings == [
        Finding("email", 1),
        Finding("iban", 1),
        Finding("payment_card", 1),
    ]
    assert "DE89" not in repr(findings) and "4111" not in repr(findings)


def test_only_enabled_detectors_run() -> None:
    text = "mail anna@example.com, IBAN DE89370400440532013000"
    assert DetectorSet(["iban"]).scan([text]) == [Finding("iban", 1)]
    assert DetectorSet([]).scan([text]) == []
    # The classifier passes a dict of detector -> class: its keys are the names.
    assert DetectorSet({"email": "internal"}).scan([text]) == [Finding("email", 1)]


def test_scan_takes_any_iterable_once_and_counts_across_messages() -> None:
    messages = iter(["first DE89370400440532013000", "second GB82WEST12345698765432"])
    assert ALL.scan(messages) == [Finding("iban", 2)]
    assert ALL.scan("a single string DE89370400440532013000") == [Finding("iban", 1)]
    # A card, IBAN, id or key split over two messages is found (the conversation is one
    # text); a phone number is not joined, so two short numbers stay two fragments.
    assert ALL.scan(["call 070-123", "45 67"]) == []
    assert ALL.scan(["card 4111 1111", "1111 1111 please"]) == [Finding("payment_card", 1)]


def test_each_builtin_is_a_detector_with_find() -> None:
    from enclave.gateway import detectors

    builtins: list[Detector] = [getattr(detectors, name.upper()) for name in DETECTOR_NAMES]
    assert [detector.name for detector in builtins] == list(DETECTOR_NAMES)
    for detector in builtins:
        assert detector.find("nothing to see here") == 0
    assert detectors.IBAN.find("SE45 5000 0000 0583 9825 7466 and DE89370400440532013000") == 2
    assert detectors.EMAIL.find("a@example.com b@example.com") == 2


# --- iban ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "GB82WEST12345698765432",
        "DE89370400440532013000",
        "SE4550000000058398257466",
        "SE45 5000 0000 0583 9825 7466",
        "Pay the invoice to NL91 ABNA 0417 1643 00 today.",
        "Konto: FR14 2004 1010 0505 0001 3M02 606.",
        "NO9386011117947",
        '{"iban": "GB82 WEST 1234 5698 7654 32", "currency": "GBP"}',
        "SE45 5000 0000 0583 9825 7466 SEK",
        "gb82west12345698765432",  # any case
        "Gb82 West 1234 5698 7654 32",
        "SE45-5000-0000-0583-9825-7466",
    ],
)
def test_iban_finds_valid_ibans(text: str) -> None:
    assert found("iban", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        "GB82WEST12345698765433",  # one digit changed: mod 97 fails
        "DE89370400440532013001",
        "SE45 5000 0000 0583 9825 7467",
        "DE8937040044053201300",  # one character short for DE
        "XX89370400440532013000",  # no such country
        "SE45 50000000 0583 9825 7466",  # groups that are not of four
        "gb82west12345698765433",  # lower case counts, but mod 97 still fails
        "SE45 5000.0000 0583 9825 7466",  # two kinds of separator
    ],
)
def test_iban_rejects_invalid_checksums_and_shapes(text: str) -> None:
    assert found("iban", text) == 0


def test_iban_digits_are_not_also_a_phone_or_card() -> None:
    assert counts("NL91 ABNA 0417 1643 00 and SE45 5000 0000 0583 9825 7466") == {"iban": 2}


@given(st.sampled_from(sorted(IBAN_LENGTHS)), st.data())
def test_iban_check_digits_make_a_valid_iban_and_a_changed_digit_breaks_it(
    country: str, data: st.DataObject
) -> None:
    length = IBAN_LENGTHS[country] - 4
    alphabet = string.digits + string.ascii_uppercase
    bban = data.draw(st.text(alphabet=alphabet, min_size=length, max_size=length))
    iban = country + iban_check_digits(country, bban) + bban
    assert iban_valid(iban)
    assert iban_valid(" ".join(iban[i : i + 4] for i in range(0, len(iban), 4)))
    digits = [i for i, char in enumerate(bban) if char.isdigit()]
    if digits:
        index = data.draw(st.sampled_from(digits))
        other = data.draw(st.sampled_from([d for d in string.digits if d != bban[index]]))
        changed = bban[:index] + other + bban[index + 1 :]
        assert not iban_valid(country + iban[2:4] + changed)


# --- payment cards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "Amex 3782 822463 10005 exp 12/27",
        "2223003122003222",  # Mastercard 2-series
        "6011111111111117",  # Discover
        "3530111333300000",  # JCB
        "30569309025904",  # Diners Club
        '{"card": "5555 5555 5555 4444"}',
        "call_1 4111 1111 1111 1111",  # after another number
        "exp 12/27 4111 1111 1111 1111",
        "4111111111111111.0",  # a card number as a float
        "4111.1111.1111.1111",  # separators: one kind, a card's groups
        "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
    ],
)
def test_payment_card_finds_luhn_valid_cards(text: str) -> None:
    assert found("payment_card", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "5555555555554445",
        "378282246310006",
        "4111 1111 1111 1112",
        "1234567812345670",  # Luhn-valid, but no card network starts with 1
        "41111111111111",  # Visa has no 14-digit numbers
        "4111 1111-1111 1111",  # mixed separators
        "411 1111 1111 11111",  # not a card's grouping
        "order 0.4111111111111111",  # the fraction of a decimal
        "4,111,111,111,111,111",  # an amount's groups of three
        "4111.1111 1111.1111",  # two kinds of separator
    ],
)
def test_payment_card_rejects_invalid_numbers(text: str) -> None:
    assert found("payment_card", text) == 0


@given(st.text(alphabet=string.digits, min_size=1, max_size=30), st.data())
def test_luhn_check_digit_makes_a_valid_number_and_a_changed_digit_breaks_it(
    payload: str, data: st.DataObject
) -> None:
    number = payload + luhn_check_digit(payload)
    assert luhn_valid(number)
    index = data.draw(st.integers(0, len(number) - 1))
    other = data.draw(st.sampled_from([d for d in string.digits if d != number[index]]))
    assert not luhn_valid(number[:index] + other + number[index + 1 :])


# --- national ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "811228-9874",
        "19811228-9874",
        "198112289874",
        "Personnummer: 811228+9874",  # + : a hundred or older
        "701063-2391",  # samordningsnummer: day 63 = 3 + 60
        "fødselsnummer 01019012480",  # Norway
        "henkilötunnus 131052-308T",  # Finland
        "CPR-nr. 010190-1234",  # Denmark: a date after the keyword
        "BSN: 111222333",  # the Netherlands: 11-proof after the keyword
    ],
)
def test_national_id_finds_valid_ids(text: str) -> None:
    assert found("national_id", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        "811228-9875",  # Luhn fails
        "19811228-9875",
        "811328-9874",  # month 13
        "810230-1234",  # 30 February
        "8112289874",  # ten bare digits: too often something else
        "202607151230",  # a timestamp in a future year, not a person
        "01019012481",  # Norway: check digit wrong
        "131052-308U",  # Finland: check character wrong
        "010190-1234",  # Danish shape without "CPR"
        "111222333",  # BSN shape without "BSN"
        "BSN: 111222334",  # 11-proof fails
        "version 2024.01.15-1234",
    ],
)
def test_national_id_rejects_invalid_ids(text: str) -> None:
    assert found("national_id", text) == 0


def test_national_id_checksum_helpers() -> None:
    assert swedish_id_valid("811228-9874") and not swedish_id_valid("811228-9864")
    assert norwegian_id_valid("01019012480") and not norwegian_id_valid("01019012408")
    assert finnish_id_valid("131052-308T") and not finnish_id_valid("131052-309T")
    assert bsn_valid("111222333") and not bsn_valid("111222334")


@given(st.dates(), st.integers(0, 999), st.booleans())
def test_swedish_ids_built_with_luhn_are_valid_and_a_changed_digit_breaks_them(
    date: object, serial: int, coordination: bool
) -> None:
    import datetime

    assert isinstance(date, datetime.date)
    day = date.day + (60 if coordination else 0)
    payload = f"{date:%y%m}{day:02d}{serial:03d}"
    number = payload + luhn_check_digit(payload)
    assert swedish_id_valid(f"{number[:6]}-{number[6:]}")
    wrong = str((int(number[-1]) + 1) % 10)
    assert not swedish_id_valid(f"{number[:6]}-{number[6:9]}{wrong}")


def test_a_personnummer_is_not_also_a_phone_number() -> None:
    assert counts("Anna, 811228-9874, ring 070-123 45 67") == {"national_id": 1, "phone": 1}
    assert counts("born 011228-9871 in Uppsala") == {"national_id": 1}


# --- phone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "+46 70 123 45 67",
        "Ring mig på 070-123 45 67.",
        "0701234567",
        "08-123 456 78",
        "+46 (0)70-123 45 67",
        "0046 70 123 45 67",
        "(555) 123-4567",
        "555-123-4567",
        "+1 555 123 4567",
        "+1 (555) 123-4567",
        "+44 20 7946 0958",
        "020 7946 0958",
        "01.23.45.67.89",
        "+14155550123",
    ],
)
def test_phone_finds_phone_numbers(text: str) -> None:
    assert found("phone", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-15",
        "2024-01-15 10:30",
        "2024-01-15T10:30:00Z",
        "15.01.2024 10:30",
        "01/15/2024",
        "1 234 567",
        "1 234 567 890 SEK",
        "$1,234,567.89",
        "192.168.100.200",
        "10.0.0.1",
        "version 1.2.3.4567",
        "0.000123456789",
        "ISBN 978-3-16-148410-0",
        "0 0 0 1 0 0 0 0 0 1",
        "123456789",
        "0123456789",  # bare, not a mobile number
        "1705314600000",
        "1e-10 and 3.14159265358979",
    ],
)
def test_phone_ignores_dates_amounts_addresses_and_versions(text: str) -> None:
    assert found("phone", text) == 0


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "anna@example.com",
        "Mail bob.smith+tag@mail.example.co.uk now.",
        "<first.last@sub.domain.org>",
        '{"email": "ops-team@northwind.example"}',
    ],
)
def test_email_finds_addresses(text: str) -> None:
    assert found("email", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        "icon@2x.png",
        "git clone git@github.com:org/repo.git",
        "@dataclass(frozen=True)",
        "npm install react@18.2.0",
        "user@localhost",
        "meet @ 10:30",
        "foo@bar",
    ],
)
def test_email_ignores_lookalikes(text: str) -> None:
    assert found("email", text) == 0


def test_email_counts_each_address() -> None:
    assert found("email", "cc: a@example.com, b@example.org; c@example.net") == 3


# --- private keys --------------------------------------------------------------------------

PEM_BODY = "MIIEowIBAAKCAQEAx4Nq4bGvd5c0fQ8a9Xc6HqVJ1ZhFQ1uFz3k8r2VwTb7LmQ9p\n" * 3


@pytest.mark.parametrize(
    "kind", ["RSA ", "EC ", "OPENSSH ", "DSA ", "ENCRYPTED ", "", "PGP PRIVATE KEY BLOCK"]
)
def test_private_key_finds_pem_blocks(kind: str) -> None:
    header = kind if kind.startswith("PGP") else f"{kind}PRIVATE KEY"
    text = f"-----BEGIN {header}-----\n{PEM_BODY}-----END {header}-----\n"
    # The body's lines are part of the key, not extra api_key findings.
    assert counts(f"here is my key:\n{text}") == {"private_key": 1}


def test_private_key_in_json_escaped_tool_arguments() -> None:
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}-----END RSA PRIVATE KEY-----"
    assert found("private_key", json.dumps({"key": key})) == 1


def test_a_private_key_header_without_a_body_is_a_mention() -> None:
    text = "A PEM file starts with -----BEGIN PRIVATE KEY----- and ends with -----END..."
    assert found("private_key", text) == 0
    assert found("private_key", "-----BEGIN PUBLIC KEY-----\n" + PEM_BODY) == 0


# --- api keys ------------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwia"
    "WF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    "text",
    [
        "sk-proj-Q7dLm2ZpX9vR4tK8wN3bY6cF1hJ5sA0eT2uV",
        "OPENAI_API_KEY=sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6l",
        "sk-ant-api03-" + "aB3dE6fG9hJ2kL5mN8pQ1rS4tU7vW0xY" * 3,
        "ghp_" + "aB3dE6fG9hJ2kL5mN8pQ1rS4tU7vW0xY1234",
        "github_pat_11ABCDEFG0" + "aB3dE6fG9hJ2kL5mN8pQ1rS4tU7vW0xY" * 2,
        "glpat-aB3dE6fG9hJ2kL5mN8pQ",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "hf_94wBhPGp6KrrTH3KDchhKpRxZwd6dmHWLL",
        "ek-Zx9_kQ2mP7vB4nR8tY1wE6uI3oA5sD0fG2hJ4kL6zXc",
        JWT,
        "Authorization: Bearer abcDEF1234567890ghijKLMN",
        "Authorization: Basic dXNlcjpodW50ZXIy",  # user:hunter2
        "postgres://app:s3cretPassw0rd@db.internal:5432/app",
        "api_key = '3ax6xnjp29jd6fds4gc373sgvjxteol0'",  # lower case: counts with a keyword
        '{"client_secret": "8f7d6c5b4a3928171615141312111009"}',
        "the export token is Xk9mQ2vL7pR4tZ8wN1bY5cF3hJ6sA0eD",  # generic: random base62
        "aws_secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCY3EXAMPLE1",
    ],
)
def test_api_key_finds_tokens(text: str) -> None:
    assert found("api_key", text) == 1


@pytest.mark.parametrize(
    "text",
    [
        BUSINESS_ENGLISH,
        CODE,
        "sk-learn-compatible-estimator-api",
        "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",  # a git SHA
        "550e8400-e29b-41d4-a716-446655440000",
        "https://example.com/orders/550e8400-e29b-41d4-a716-446655440000",
        "/home/alice/projects/Enclave2024/src/enclave/gateway/detectors.py",
        "TheBloke/Llama-2-7B-Chat-GGUF and meta-llama/Meta-Llama-3.1-8B-Instruct",
        "SGVsbG8gd29ybGQsIHRoaXMgaXMgYSB0ZXN0IG9mIGJhc2U2NA==",  # base64 of English
        "AbstractSingletonProxyFactoryBean2",
        "Authorization: Bearer YOUR_API_KEY",
        "api_key=<your-api-key>",
        "postgresql://scott:tiger@localhost/test",
        "postgresql://user:${DB_PASSWORD}@db/app",
        "the-quick-brown-fox-jumps-over-the-lazy-dog-2024",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
    ],
)
def test_api_key_ignores_prose_code_paths_hashes_and_placeholders(text: str) -> None:
    assert found("api_key", text) == 0


def test_generic_rule_against_its_documented_cases() -> None:
    assert looks_random(b"Xk9mQ2vL7pR4tZ8wN1bY5cF3hJ6sA0eD")
    assert not looks_random(b"Qwen2_5OmniPreTrainedModelForCausalLM")  # words
    assert not looks_random(b"0123456789abcdef0123456789abcdef")  # hex
    assert not looks_random(b"aaaaaaaaaaaaBBBBBBBBBBBB111111111111")  # low entropy
    assert not looks_random(b"Xk9mQ2vL7pR4tZ8w")  # too short


def test_a_jwt_is_one_finding() -> None:
    assert counts(f"Authorization: Bearer {JWT}") == {"api_key": 1}


# --- no findings in ordinary requests ------------------------------------------------------


def test_ordinary_business_english_finds_nothing() -> None:
    assert ALL.scan([BUSINESS_ENGLISH]) == []


def test_json_tool_output_without_secrets_finds_nothing() -> None:
    assert ALL.scan([TOOL_OUTPUT]) == []


def test_a_whole_chat_without_secrets_finds_nothing() -> None:
    messages = ["You are a helpful assistant.", BUSINESS_ENGLISH, CODE, TOOL_OUTPUT]
    assert ALL.scan(messages) == []


def test_a_chat_with_one_of_each_counts_each_once() -> None:
    text = (
        "Contact anna.lindqvist@northwind.example or +46 70 123 45 67. Pay to "
        "SE45 5000 0000 0583 9825 7466 with card 4111 1111 1111 1111; personnummer "
        "811228-9874; key sk-proj-Q7dLm2ZpX9vR4tK8wN3bY6cF1hJ5sA0e.\n"
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}-----END OPENSSH PRIVATE KEY-----"
    )
    assert counts(BUSINESS_ENGLISH, text, TOOL_OUTPUT) == dict.fromkeys(DETECTOR_NAMES, 1)


# --- robustness ----------------------------------------------------------------------------


@given(st.lists(st.text(), max_size=5))
def test_random_text_never_crashes_and_counts_are_positive(texts: list[str]) -> None:
    findings = ALL.scan(texts)
    assert [finding.type for finding in findings] == sorted({f.type for f in findings})
    assert all(finding.type in DETECTOR_NAMES and finding.count > 0 for finding in findings)


@given(st.text(alphabet="0123456789 +-.()/@:=_aAsSkK\nEYJeyj", max_size=300))
def test_number_and_token_shaped_noise_never_crashes(text: str) -> None:
    for finding in ALL.scan([text]):
        assert finding.count > 0


def test_lone_surrogates_from_json_do_not_crash() -> None:
    text = json.loads('"\\ud800 DE89370400440532013000"')
    assert ALL.scan([text]) == [Finding("iban", 1)]


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1_000_000,
        "1 " * 500_000,
        "1" * 1_000_000,
        "@" * 1_000_000,
        "a@" * 500_000,
        "x@y." * 250_000,
        "+1 " * 333_333,
        "-----BEGIN RSA PRIVATE KEY-----" * 32_000,
        "eyJ" * 333_333,
        "a://b:c@" * 125_000,
        ("Ab1x" * 6 + " ") * 40_000,
        "Bearer " * 142_000,
        "(1)" * 333_333,
        "12 34-56.78 " * 83_000,
    ],
    ids=lambda text: repr(text[:12]),
)
def test_a_megabyte_of_adversarial_input_finishes(text: str) -> None:
    # Linear, not timed strictly here: the suite's timeout catches catastrophic backtracking.
    findings = ALL.scan([text])
    assert all(finding.count >= 0 for finding in findings)
