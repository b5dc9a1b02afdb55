"""Sensitive values spelled the ways people and attackers spell them, and text that holds none.

For ``tests/unit/test_detector_variants.py`` (driven by hypothesis through
``st.randoms()``) and ``bench/detectors.py`` (a seeded :class:`random.Random`):
both draw from the same generators, so the bench's detection rate and the tests
measure the same thing.

:func:`make_value` draws a random *valid* value of one kind (a Luhn-valid card
with a real network prefix, an IBAN with correct check digits, a Swedish
personnummer with a real date, a PEM key, a prefixed API key). Each entry of
:data:`FAMILIES` turns one into the texts of a request, or returns ``None``
where the family does not apply to that kind. :data:`CLEAN` is text with
numbers, ids and tokens that must not count, and :func:`disguise` applies the
same Unicode tricks to it.
"""

from __future__ import annotations

import base64
import datetime
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from enclave.gateway.detectors import IBAN_LENGTHS, iban_check_digits, luhn_check_digit

KINDS = ("iban", "payment_card", "national_id", "private_key", "api_key")
NUMBERS = ("iban", "payment_card", "national_id")


@dataclass(frozen=True)
class Value:
    """One valid value: its groups as usually printed, and how they are joined."""

    kind: str
    groups: tuple[str, ...]
    separator: str
    spelled: str  # the characters to spell out one by one (no separators)

    @property
    def text(self) -> str:
        return self.separator.join(self.groups)


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _iban(rng: random.Random, countries: list[str] | None = None) -> Value:
    country = rng.choice(countries or sorted(IBAN_LENGTHS))
    length = IBAN_LENGTHS[country] - 4
    # Real BBANs are account digits, some after a four-letter bank code (GB, NL, IE, MT),
    # which leaves ten digits or more.
    letters = length >= 14 and rng.random() < 0.3
    bank = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) if letters else ""
    bban = bank + _digits(rng, length - len(bank))
    iban = country + iban_check_digits(country, bban) + bban
    return Value("iban", tuple(iban[i : i + 4] for i in range(0, len(iban), 4)), " ", iban)


_NETWORKS = (("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16))


def _card(rng: random.Random) -> Value:
    prefix, length = rng.choice(_NETWORKS)
    payload = prefix + _digits(rng, length - len(prefix) - 1)
    number = payload + luhn_check_digit(payload)
    groups: tuple[str, ...] = (number[:4], number[4:10], number[10:])  # Amex: 4-6-5
    if length != 15:
        groups = tuple(number[i : i + 4] for i in range(0, length, 4))
    return Value("payment_card", groups, " ", number)


def _personnummer(rng: random.Random) -> Value:
    day = datetime.date(1930, 1, 1) + datetime.timedelta(days=rng.randrange(75 * 365))
    payload = f"{day:%y%m%d}{_digits(rng, 3)}"
    number = payload + luhn_check_digit(payload)
    # Spelled out digit by digit it needs its century: ten bare digits do not count.
    return Value("national_id", (number[:6], number[6:]), "-", f"{day:%Y}"[:2] + number)


_BASE62 = string.ascii_letters + string.digits
_BASE64 = _BASE62 + "+/"


def _private_key(rng: random.Random) -> Value:
    body = "\n".join("".join(rng.choice(_BASE64) for _ in range(64)) for _ in range(4))
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    text = f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"
    return Value("private_key", (text,), "", text)


def _api_key(rng: random.Random) -> Value:
    prefix, length = rng.choice((("sk-proj-", 40), ("ghp_", 36), ("glpat-", 20), ("hf_", 34)))
    token = "".join(rng.choice(_BASE62) for _ in range(length - 1)) + rng.choice(string.digits)
    return Value("api_key", (prefix + token,), "", prefix + token)


_MAKERS: dict[str, Callable[[random.Random], Value]] = {
    "iban": _iban,
    "payment_card": _card,
    "national_id": _personnummer,
    "private_key": _private_key,
    "api_key": _api_key,
}


def make_value(rng: random.Random, kind: str) -> Value:
    """A random valid value of ``kind`` (one of :data:`KINDS`)."""
    return _MAKERS[kind](rng)


def _in_context(rng: random.Random, text: str) -> str:
    before = rng.choice(["", "Here it is: ", "pay to ", "use "])
    return before + text + rng.choice(["", ".", " thanks", "\n"])


# --- the families ----------------------------------------------------------------------------

Family = Callable[[random.Random, Value], list[str] | None]

UNICODE_SPACES = "\u00a0\u2000\u2002\u2003\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
UNICODE_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2212\ufe63\uff0d"
FORMAT_CHARACTERS = "\u200b\u200c\u200d\u2060\u00ad\ufeff\u200e\u200f\u2062"
# Zero of each digit set: Arabic-Indic, Extended Arabic-Indic, Devanagari, Bengali, Thai.
DIGIT_ZEROS = (0x660, 0x6F0, 0x966, 0x9E6, 0xE50)
# Latin -> a Cyrillic (or, for N and Z, Greek) letter that looks the same.
LOOK_ALIKES = dict(
    zip(
        "ABCEHKMOPTXaeopcxysNZ",
        "\u0410\u0412\u0421\u0415\u041d\u041a\u041c\u041e\u0420\u0422\u0425\u0430\u0435\u043e\u0440\u0441\u0445\u0443\u0455\u039d\u0396",
        strict=True,
    )
)


def _separated(separator: str) -> Family:
    def family(rng: random.Random, value: Value) -> list[str] | None:
        if value.kind not in NUMBERS:
            return None
        if rng.random() < 0.5:  # the usual groups
            return [_in_context(rng, separator.join(value.groups))]
        return [_in_context(rng, separator.join(value.spelled))]  # character by character

    return family


def _unicode_space(rng: random.Random, value: Value) -> list[str] | None:
    if value.kind == "private_key":
        header, rest = value.text.split("\n", 1)
        space = rng.choice(UNICODE_SPACES)
        return [_in_context(rng, header.replace(" ", space) + "\n" + rest)]
    if value.kind not in NUMBERS:
        return None
    return [_in_context(rng, rng.choice(UNICODE_SPACES).join(value.groups))]


def _unicode_dash(rng: random.Random, value: Value) -> list[str] | None:
    if value.kind not in NUMBERS:
        return None
    return [_in_context(rng, rng.choice(UNICODE_DASHES).join(value.groups))]


def _zero_width(rng: random.Random, value: Value) -> list[str] | None:
    text = value.text
    for _ in range(rng.randint(1, 4)):
        position = rng.randint(1, len(text) - 1)
        text = text[:position] + rng.choice(FORMAT_CHARACTERS) + text[position:]
    return [_in_context(rng, text)]


def _full_width(rng: random.Random, value: Value) -> list[str] | None:
    wide = {code: code + 0xFEE0 for code in range(0x21, 0x7F)}
    return [_in_context(rng, value.text.translate(wide))]


def _other_digits(rng: random.Random, value: Value) -> list[str] | None:
    if value.kind == "private_key":
        return None
    zero = rng.choice(DIGIT_ZEROS)
    return [_in_context(rng, value.text.translate({0x30 + d: zero + d for d in range(10)}))]


def _iban_case(change: Callable[[random.Random, str], str]) -> Family:
    def family(rng: random.Random, value: Value) -> list[str] | None:
        if value.kind != "iban":
            return None
        text = value.text if rng.random() < 0.5 else value.spelled
        return [_in_context(rng, change(rng, text))]

    return family


def _mixed_case(rng: random.Random, text: str) -> str:
    return "".join(char.lower() if rng.random() < 0.5 else char for char in text)


def _iban_dashed(rng: random.Random, value: Value) -> list[str] | None:
    return [_in_context(rng, "-".join(value.groups))] if value.kind == "iban" else None


def _look_alike(rng: random.Random, value: Value) -> list[str] | None:
    if value.kind not in ("iban", "api_key", "private_key"):
        return None
    text = value.text
    positions = [i for i, char in enumerate(text[:40]) if char in LOOK_ALIKES]
    if not positions:
        return None
    for position in rng.sample(positions, min(len(positions), rng.randint(1, 2))):
        text = text[:position] + LOOK_ALIKES[text[position]] + text[position + 1 :]
    return [_in_context(rng, text)]


def _split(rng: random.Random, value: Value) -> list[str] | None:
    text = value.text
    position = rng.randint(1, len(text) - 1)
    return ["Here it is: " + text[:position], text[position:] + " thanks"]


def _encoded(rng: random.Random, raw: bytes) -> str:
    if rng.random() < 0.5:
        return base64.b64encode(raw).decode()
    return base64.urlsafe_b64encode(raw).decode()


def _base64(rng: random.Random, value: Value) -> list[str] | None:
    return [_in_context(rng, _encoded(rng, value.text.encode()))]


def _base64_twice(rng: random.Random, value: Value) -> list[str] | None:
    return [_in_context(rng, _encoded(rng, _encoded(rng, value.text.encode()).encode()))]


def _hex(rng: random.Random, value: Value) -> list[str] | None:
    encoded = value.text.encode().hex()
    return [_in_context(rng, encoded.upper() if rng.random() < 0.5 else encoded)]


FAMILIES: dict[str, Family] = {
    "space": _separated(" "),
    "dot": _separated("."),
    "slash": _separated("/"),
    "underscore": _separated("_"),
    "comma": _separated(","),
    "unicode space (NBSP, thin, ...)": _unicode_space,
    "unicode dash": _unicode_dash,
    "zero-width / soft hyphen": _zero_width,
    "full-width": _full_width,
    "Arabic-Indic and other digits": _other_digits,
    "IBAN lower case": _iban_case(lambda rng, text: text.lower()),
    "IBAN mixed case": _iban_case(_mixed_case),
    "IBAN dashed": _iban_dashed,
    "Cyrillic/Greek look-alike": _look_alike,
    "split over two messages": _split,
    "base64": _base64,
    "base64 of base64": _base64_twice,
    "hex": _hex,
}


def variant(rng: random.Random, family: str, kind: str) -> list[str] | None:
    """The texts of one request holding a fresh ``kind`` value in ``family``'s spelling."""
    value = make_value(rng, kind)
    if family == "Cyrillic/Greek look-alike" and kind == "iban":
        value = _iban(rng, [c for c in IBAN_LENGTHS if set(c) & set(LOOK_ALIKES)])
    return FAMILIES[family](rng, value)


# --- clean text --------------------------------------------------------------------------------

CLEAN: tuple[str, ...] = (
    "Meeting on 2024-01-15 at 10:30, follow-up 15.01.2024 and 01/15/2024.",
    "Revenue was 1 234 567 SEK in Q4, up 12.5% on Q3; budget $2,450,000.00 for 2024-2025.",
    "Amounts: 1 234 567 890 SEK, 12 345 678,90 EUR, 4.111.111,11 kr and 41,111,111.11 USD.",
    "Release 2.14.3 shipped; see versions 1.2.3.4567 and 10.0.19045.3803.",
    "Servers 192.168.100.200, 10.0.0.1 and 172.16.254.1 answer on ports 8080 and 443.",
    "Timestamps 1705314600000, 2024-01-15T10:30:00Z and 2024-01-15 10:30:00.",
    "Commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3, uuid 550e8400-e29b-41d4-a716-446655440000.",
    "Order INV-2024-0117, ticket #48213, ISBN 978-3-16-148410-0, DOI 10.1000/182.",
    "Lists: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 and 3 1 4 1 5 9 2 6 5 3 5.",
    "Matrix rows: 0 1 0 0 1 0 1 1 0 0 1 0 1 0 0 1 / 1 0 0 1 0 1 1 0 1 0 0 1 0 1 1 0.",
    "CSV: 12,34,56,78,90,12,34,56 and 2024/01/15/10/30 and 2024_01_15_1030.",
    "Coordinates 59.3293, 18.0686; pi 3.14159265358979; e 2.718281828459045.",
    "Phone-like but not: 123456789, 0 0 0 1 0 0 0 0 0 1, 1e-10.",
    "Call the office between 9 and 17, extension 4411, room 2.14, floor 3.",
    "The file /var/lib/enclave/reports/2024/q4-summary_final.pdf is 18450 bytes.",
    "Model Qwen/Qwen2.5-7B-Instruct and meta-llama/Meta-Llama-3.1-8B-Instruct are loaded.",
    "SGVsbG8gd29ybGQsIHRoaXMgaXMgYSB0ZXN0IG9mIGJhc2U2NA== is base64 of a plain sentence.",
    "Hex dump 48656c6c6f20776f726c642c207468697320697320612074657374 of a greeting.",
    '{"id": 48213, "balance": 1234567.89, "due": "2024-02-14", "tags": ["priority"]}',
    "Kvartalsrapporten för 2024 visar en ökning på 12,5 % jämfört med föregående år.",
    "Отчёт за 2024 год показывает рост на 12,5 % по сравнению с прошлым годом.",  # noqa: RUF001
    "今天的会议讨论了预算，请在2024年1月15日之前提交报告。",  # noqa: RUF001
)


def disguise(rng: random.Random, text: str) -> str:
    """``text`` with the Unicode tricks of :data:`FAMILIES` applied to whatever is in it."""
    chars = []
    zero = rng.choice(DIGIT_ZEROS)
    wide = rng.random() < 0.3
    for char in text:
        roll = rng.random()
        if char == " " and roll < 0.5:
            char = rng.choice(UNICODE_SPACES)
        elif char == "-" and roll < 0.5:
            char = rng.choice(UNICODE_DASHES)
        elif char.isdigit() and char.isascii() and roll < 0.5:
            char = chr(0xFF10 + int(char)) if wide else chr(zero + int(char))
        elif char in LOOK_ALIKES and roll < 0.2:
            char = LOOK_ALIKES[char]
        chars.append(char)
        if rng.random() < 0.05:
            chars.append(rng.choice(FORMAT_CHARACTERS))
    return "".join(chars)
