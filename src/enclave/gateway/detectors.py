"""Sensitive-data detectors: they count what a request carries and keep none of it.

Every chat request's text (system, user, assistant and tool messages) is
scanned on the request path, and each finding type maps to a data class in
``detectors:``. Only a type and a count leave this module. Matched values are
never stored, logged or returned.

The design follows what each step costs:

- **Normalise first, for free on ASCII.** Each text goes through
  :func:`enclave.gateway.normalize.normalize`: NFKC, Cf characters (zero-width,
  soft hyphen) removed, every Unicode digit, space and dash to ASCII, and
  Cyrillic/Greek look-alikes next to ASCII letters mapped to Latin. ASCII text
  (nearly every request) returns unchanged after one ``str.isascii()``; other
  text pays one ``bytes.translate`` unless it holds a character that could
  change. The number detectors then accept ``" .,/_-"`` as separators, one
  kind per value, in the value's usual groups or between every character
  (``4 1 1 1 ...``), so a space there may be any Unicode space.
- **One encode, then cheap prefilters.** :class:`DetectorSet` joins a request's
  texts with newlines and encodes them to UTF-8 once. Each detector first asks
  a question that CPython answers in C at memory speed. Is there an ``@``
  (email), a ``PRIVATE KEY`` (PEM), a run of 16 token characters
  (``bytes.translate`` to a two-letter alphabet, then ``bytes.find``: API keys),
  or nine digits with only separators between them (a translate that deletes
  the separators, then ``bytes.find``: phone, card, IBAN, national id)?
  Ordinary prose, and most dates, amounts and timestamps, answer no to all.
- **Regexes only in small windows.** Where a prefilter says yes, the
  detector's regex runs only in merged windows of a few dozen bytes around the
  hits, or anchored at them (each ``@``, each token run), so the cost follows
  the number of candidates, not the size of the request. Every regex uses
  bounded or unambiguous quantifiers (a separator class never overlaps the
  digit class), so a 1 MB adversarial input stays linear.
- **Validate in Python.** A candidate must pass its format's checksum where
  there is one: Luhn for cards and Swedish personnummer, ISO 7064 mod 97 for
  IBANs, mod 11 for Norwegian fødselsnummer and the Dutch BSN, mod 31 for the
  Finnish HETU. National ids also need a real calendar date, cards a network's
  prefix and length, and IBANs their country's length.
- **One finding per span.** The number detectors defer in the order IBAN,
  payment card, national id, phone, so the digits of a valid IBAN are not also
  counted as a phone number. Spans are cached on the scan, so deferring costs
  nothing when the other detector is enabled too.
- **Encoded values are decoded.** The token runs that ``api_key`` finds anyway
  (16+ characters of ``[A-Za-z0-9+/_=-]``) are cut at ``=`` and decoded as hex
  or as base64 (standard or URL-safe); what decodes to printable UTF-8 is
  normalised and scanned like the request, and its own runs once more
  (base64 of base64), no deeper. The generic ``api_key`` rule already skips
  base64 of text, so the encoded form is not counted as well.
- **Values split across texts.** Where one text ends and the next begins with
  letters, digits or value punctuation, the last and first 128 characters are
  scanned again, glued directly and with one space between, for IBANs, cards,
  national ids, API keys and PEM keys. Only a span that crosses the join counts,
  once per join. Phones and e-mail addresses are not joined: two short numbers
  in two strings are more often two numbers.

False-positive choices worth knowing (each has a test):

- ``api_key`` matches known token prefixes (OpenAI, Anthropic, GitHub, GitLab,
  Slack, AWS, Google, Stripe live keys, Hugging Face, Enclave ``ek-``), JWTs,
  ``Bearer``/``Basic`` credentials, passwords in URLs (``scheme://user:pw@``)
  and ``api_key=``/``"secret": "..."`` assignments. Its generic rule (see
  :func:`looks_random`) flags a token of 24 to 1024 characters of
  ``[A-Za-z0-9+/_=-]`` only when it mixes upper case, lower case and digits
  and has Shannon entropy of at least 0.8 * log2(length) bits per character.
  It must also not be hex (git SHAs, UUIDs), not be made of words (its letter
  chunks, split at case changes, must average under 3 characters, which
  CamelCase names such as ``Qwen2_5OmniPreTrainedModel`` fail), not be base64
  of printable text, and not be a path or a model id, which are judged piece
  by piece. The thresholds were tuned on ~350,000 long tokens from the Python
  sources and docs of this project's dependencies: in those 253 MB ``api_key``
  counts 39 values, nearly all random ids (Google Docs ids in URLs) or
  documentation examples. The rule keeps ~93% of random 24-character and ~99%
  of random 64-character base62 tokens. All-lower-case and hex secrets count
  only with a prefix or a keyword.
- ``phone`` accepts ``+CC`` numbers with 8 to 15 digits, ``00CC`` numbers
  written with separators, NANP numbers written with separators
  (``(555) 123-4567``) and national numbers with a trunk ``0`` and 9 to 12
  digits in groups of two or more (``070-123 45 67``, ``020 7946 0958``). An
  unseparated national number must be a 10- or 11-digit ``07`` mobile. Dates,
  amounts, IP addresses, versions and timestamps fail these shapes; a bare
  ``+2147483647`` does not. Numbers listed with only single spaces between
  them run together and are not counted.
- ``payment_card`` on an unseparated 13-19 digit run with a card prefix
  passes Luhn one time in ten, so long numeric constants in code or data
  sometimes count (16 in the 253 MB above).
- ``national_id`` needs a checksum and a valid date for Swedish, Norwegian
  and Finnish ids. Danish CPR (no checksum since 2007) and Dutch BSN (9 bare
  digits) also need the word ``CPR``/``BSN`` just before them. A 12-digit
  number that starts with a plausible year can still pass as a personnummer
  (one in ~150 such numbers).
- ``iban`` accepts any case and one kind of separator, in groups of four or
  between every character, so ``se45-5000-...`` counts; mod 97 and the
  country's length keep that specific. Its window prefilter needs nine digits
  in the BBAN, which every registry format has.
- Separators between digits ("4111.1111.1111.1111", "811228.9874",
  "1 9 8 1 1 2 2 8 9 8 7 4") count only in a value's own grouping or one
  digit at a time, and only with one kind of separator, so amounts
  ("1 234 567 SEK", "4,111,111,111.11") and lists ("1, 2, 3, ...") do not
  run together into a card. ``bench/detectors.py`` prints the detection rate
  on generated variants and the false positives on a clean corpus, disguised.
"""

from __future__ import annotations

import binascii
import bisect
import calendar
import datetime
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from enclave.gateway.normalize import normalize

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Finding:
    """How many values of one detector type a request contains."""

    type: str
    count: int


class Detector(Protocol):
    """Counts validated matches of one kind of sensitive value in a text."""

    name: str

    def find(self, text: str) -> int:
        """Number of validated matches in ``text``."""
        ...


# --- checksums -----------------------------------------------------------------------------


_LUHN_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, minus 9 above 9


def _luhn_remainder(digits: str) -> int:
    reverse = digits[::-1]
    return (
        sum(map(int, reverse[::2])) + sum(map(int, reverse[1::2].translate(_LUHN_DOUBLED)))
    ) % 10


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn (mod 10) check."""
    return _luhn_remainder(digits) == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` Luhn-valid."""
    return str((10 - _luhn_remainder(payload + "0")) % 10)


# Lengths from the SWIFT IBAN registry: every SEPA country and the other registered ones.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22,
    "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


_IBAN_LETTERS = {
    ord(letter): str(value) for value, letter in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)
}


def _mod97(rearranged: str) -> int:
    # Letters become two digits (A=10 ... Z=35); int() of the whole string is fast in CPython.
    return int(rearranged.translate(_IBAN_LETTERS)) % 97


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits of the IBAN for ``country`` and ``bban`` (ISO 7064 MOD 97-10)."""
    return f"{98 - _mod97(bban + country + '00'):02d}"


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (spaces allowed) has its country's length and a valid mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not compact.isascii() or not compact.isalnum() or not compact[:2].isalpha():
        return False
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    return _mod97(compact[4:] + compact[:4]) == 1


def _mod11_digit(digits: str, weights: tuple[int, ...]) -> int | None:
    check = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return None if check == 10 else check % 11


def norwegian_id_valid(number: str) -> bool:
    """Whether 11 digits are a Norwegian fødselsnummer or D-number (date, two mod-11 digits)."""
    if len(number) != 11 or not number.isdigit():
        return False
    day, month = int(number[:2]), int(number[2:4])
    if day > 40:  # D-number: day + 40
        day -= 40
    if not _date_ok(None, month, day, int(number[4:6])):
        return False
    first = _mod11_digit(number[:9], (3, 7, 6, 1, 8, 9, 4, 5, 2))
    second = _mod11_digit(number[:10], (5, 4, 3, 2, 7, 6, 5, 4, 3, 2))
    return first == int(number[9]) and second == int(number[10])


_HETU_CHECK = "0123456789ABCDEFHJKLMNPRSTUVWXY"
_HETU_CENTURY = (
    {"+": 1800, "-": 1900, "A": 2000} | dict.fromkeys("UVWXY", 1900) | dict.fromkeys("BCDEF", 2000)
)


def finnish_id_valid(hetu: str) -> bool:
    """Whether ``DDMMYYCZZZQ`` is a Finnish HETU: century sign, date, mod-31 check character."""
    if len(hetu) != 11 or hetu[6] not in _HETU_CENTURY:
        return False
    date, serial = hetu[:6], hetu[7:10]
    if not (date + serial).isdigit():
        return False
    year = _HETU_CENTURY[hetu[6]] + int(date[4:])
    if not _date_ok(year, int(date[2:4]), int(date[:2])):
        return False
    return _HETU_CHECK[int(date + serial) % 31] == hetu[10]


def bsn_valid(number: str) -> bool:
    """The Dutch "11-proof": 9 digits weighted 9..2 and -1 sum to a multiple of 11."""
    if len(number) != 9 or not number.isdigit() or number == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(number, (9, 8, 7, 6, 5, 4, 3, 2, -1), strict=True))
    return total % 11 == 0


_THIS_YEAR = datetime.date.today().year


def _date_ok(year: int | None, month: int, day: int, short_year: int = 0) -> bool:
    """A real calendar date. With ``year=None`` only ``short_year`` (YY) is known."""
    if not 1 <= month <= 12 or day < 1:
        return False
    if year is None:  # 29 February needs a leap year; "00" may be 2000, which was one
        year = 2000 if short_year % 4 == 0 else 2001
    return day <= calendar.monthrange(year, month)[1]


def swedish_id_valid(number: str) -> bool:
    """Whether a personnummer or samordningsnummer (day + 60) is valid.

    Accepts ``YYMMDD-NNNN``, ``YYMMDD+NNNN`` (100 or older), ``YYYYMMDDNNNN`` and
    ``YYYYMMDD-NNNN``; the Luhn check runs over the 10-digit form.
    """
    separator = ""
    if len(number) in (11, 13) and number[-5] in "-+":
        separator, number = number[-5], number[:-5] + number[-4:]
    if not number.isdigit() or len(number) not in (10, 12):
        return False
    if len(number) == 10 and not separator:
        return False  # ten bare digits are too often something else
    year: int | None = None
    if len(number) == 12:
        year = int(number[:4])
        if not 1870 <= year <= _THIS_YEAR:  # "202607151234" is a timestamp, not a person
            return False
        number = number[2:]
    day = int(number[4:6])
    if day > 60:  # samordningsnummer
        day -= 60
    if not _date_ok(year, int(number[2:4]), day, int(number[:2])):
        return False
    return luhn_valid(number)


# --- the shared scan -----------------------------------------------------------------------

_DIGIT_BYTES = b"0123456789"
_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NOT_DIGITS = bytes(byte for byte in range(256) if byte not in _DIGIT_BYTES)
# Separators inside numbers, plus the HETU century signs (131052A308T).
_NUM_SEPARATORS = b" .,_()/-ABCDEFUVWXY"
_NUM_MAP = bytes(
    ord("0")
    if byte in _DIGIT_BYTES or byte == ord("+")
    else ord("s")
    if byte in _NUM_SEPARATORS
    else ord("x")
    for byte in range(256)
)
_NUM_PREFILTER = b"0" * 9  # with the separators deleted
# Nine digits (a "+" counts as one) with at most two separators between neighbours, the
# least that any number detector needs ("4 1 1 1 ..." spelled out digit by digit too).
_NUM_RUN = re.compile(rb"0s{0,2}0(?:s{0,2}0){7,}")
# One separator between the digits (or letters) of a card, an IBAN or a national id: a
# space (every Unicode space is one after normalisation), a dash (likewise), ".", ",",
# "/" or "_". One kind per value, in the value's usual groups or between every character.
_SEP = rb"[ .,/_-]"
_SEP_BYTES = b" .,/_-"
_NUM_BEFORE, _NUM_AFTER = 28, 24  # room for "cpr-nr.: ", "GB82 WEST ", an IBAN's letters
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_=-"
_TOKEN_MAP = bytes(ord("x") if byte in _TOKEN_CHARS else ord(" ") for byte in range(256))
_TOKEN_RUN_MIN = 16
_TOKEN_RUN = b"x" * _TOKEN_RUN_MIN
_MANY = 64


def _merge(windows: Iterable[Span], size: int) -> list[Span]:
    """Clamp and merge overlapping windows; ``windows`` must be sorted by start."""
    merged: list[Span] = []
    for start, end in windows:
        start, end = max(start, 0), min(end, size)
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _occurrences(data: bytes, needle: bytes) -> Iterator[int]:
    position = data.find(needle)
    while position >= 0:
        yield position
        position = data.find(needle, position + 1)


def _windows(data: bytes, needle: bytes, before: int, after: int) -> list[Span]:
    """Merged windows around each ``needle``; the whole text once there are many."""
    windows: list[Span] = []
    for count, position in enumerate(_occurrences(data, needle)):
        if count == _MANY:
            return [(0, len(data))]
        windows.append((position - before, position + after))
    return _merge(windows, len(data))


def _disjoint(spans: Iterable[Span]) -> list[Span]:
    """The spans that do not overlap an earlier-starting kept span."""
    kept: list[Span] = []
    for start, end in sorted(spans):
        if not kept or start >= kept[-1][1]:
            kept.append((start, end))
    return kept


def _union(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint intervals covering ``spans``, for :func:`_overlaps`."""
    union: list[Span] = []
    for start, end in sorted(spans):
        if union and start < union[-1][1]:
            union[-1] = (union[-1][0], max(end, union[-1][1]))
        else:
            union.append((start, end))
    return union


def _overlaps(span: Span, union: list[Span]) -> bool:
    """Whether ``span`` overlaps an interval of ``union`` (from :func:`_union`): O(log n)."""
    index = bisect.bisect_left(union, (span[1],)) - 1
    return index >= 0 and union[index][1] > span[0]


class _Scan:
    """One text, encoded once, with candidate windows and validated spans computed lazily."""

    __slots__ = ("_number_windows", "_token_runs", "data", "spans")

    def __init__(self, text: str) -> None:
        self.data = text.encode("utf-8", "surrogatepass")
        self._number_windows: list[Span] | None = None
        self._token_runs: list[Span] | None = None
        self.spans: dict[str, list[Span]] = {}

    def number_windows(self) -> list[Span]:
        """Merged windows around every run of nine digits with separators between them."""
        if self._number_windows is None:
            data = self.data
            windows: list[Span] = []
            if _NUM_PREFILTER in data.translate(_NUM_MAP, _NUM_SEPARATORS):
                mapped = data.translate(_NUM_MAP)
                windows = _merge(
                    (
                        (m.start() - _NUM_BEFORE, m.end() + _NUM_AFTER)
                        for m in _NUM_RUN.finditer(mapped)
                    ),
                    len(data),
                )
            self._number_windows = windows
        return self._number_windows

    def token_runs(self) -> list[Span]:
        """Maximal runs of 16 or more characters of ``[A-Za-z0-9+/_=-]``."""
        if self._token_runs is None:
            mapped = self.data.translate(_TOKEN_MAP)
            runs: list[Span] = []
            start = mapped.find(_TOKEN_RUN)
            while start >= 0:
                end = mapped.find(b" ", start + _TOKEN_RUN_MIN)
                if end < 0:
                    end = len(mapped)
                runs.append((start, end))
                start = mapped.find(_TOKEN_RUN, end)
            self._token_runs = runs
        return self._token_runs


class _BuiltinDetector:
    """A detector that works on a shared :class:`_Scan`; subclasses implement ``_match``."""

    name: str

    def find(self, text: str) -> int:
        """Number of validated matches in ``text``."""
        return self.count(_Scan(text))

    def count(self, scan: _Scan) -> int:
        return len(self.spans(scan))

    def spans(self, scan: _Scan) -> list[Span]:
        """Validated, non-overlapping ``(start, end)`` byte spans, cached on the scan."""
        spans = scan.spans.get(self.name)
        if spans is None:
            spans = scan.spans[self.name] = _disjoint(self._match(scan))
        return spans

    def _match(self, scan: _Scan) -> Iterable[Span]:
        raise NotImplementedError


# --- private keys --------------------------------------------------------------------------

_PEM_HEADER = re.compile(rb"-----BEGIN (?:[^\s-]{1,24} ){0,3}PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(rb"[A-Za-z0-9+/]{40}")
_PEM_MAX = 16_384  # an RSA-8192 key in PEM is ~6.5 KB; the block ends at END or here


class PrivateKeyDetector(_BuiltinDetector):
    """PEM and PGP private keys: a ``-----BEGIN ... PRIVATE KEY-----`` line with a body.

    A header with no base64 body within a few lines (documentation that names the
    format, a redacted ``...``) does not count. The span covers the whole block, so
    ``api_key`` does not also count the body's lines as high-entropy tokens.
    """

    name = "private_key"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        if b"PRIVATE KEY" not in data:
            return
        for start, end in _windows(data, b"PRIVATE KEY", 48, 32):
            for header in _PEM_HEADER.finditer(data, start, end):
                body = header.end()
                if _PEM_BODY.search(data, body, body + 400):
                    block_end = data.find(b"-----END", body, body + _PEM_MAX)
                    if block_end < 0:
                        block_end = min(len(data), body + _PEM_MAX)
                    yield header.start(), block_end


# --- email ---------------------------------------------------------------------------------

_LOCAL_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
_LOCAL_MAP = bytes(ord("x") if byte in _LOCAL_CHARS else ord(" ") for byte in range(256))
_DOMAIN = re.compile(
    rb"(?:[A-Za-z0-9-]{1,63}\.){1,8}([A-Za-z]{2,24})"
    # Not the start of a longer name, and not scp-style ``git@github.com:org/repo``.
    rb"(?![A-Za-z0-9_-]|\.[A-Za-z0-9]|:[^\s])"
)
# Retina assets (icon@2x.png) and the like: extensions that are not top-level domains.
_FILE_EXTENSIONS = frozenset(
    b"png jpg jpeg gif svg webp ico bmp tif tiff js mjs cjs ts tsx jsx css scss json yaml yml "
    b"toml txt html htm pdf lock whl".split()
)


class EmailDetector(_BuiltinDetector):
    """E-mail addresses; asset names such as ``icon@2x.png`` do not count."""

    name = "email"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        if b"@" not in data:
            return
        for at in _occurrences(data, b"@"):
            domain = _DOMAIN.match(data, at + 1)
            if domain is None or domain.group(1).lower() in _FILE_EXTENSIONS:
                continue
            # The local part: up to 64 characters back, found in C (translate, rfind).
            before = data[max(0, at - 65) : at].translate(_LOCAL_MAP)
            length = len(before) - before.rfind(b" ") - 1
            start = at - length
            if 1 <= length <= 64 and data[start : start + 1].isalnum():
                yield start, domain.end()


# --- IBAN ----------------------------------------------------------------------------------

# Any case ("se45 5000 ..."), any one separator; the country code and check digits may be
# spelled out too ("S E 4 5 5 0 0 0 ...").
_IBAN = re.compile(
    rb"(?<![A-Za-z0-9])[A-Za-z]" + _SEP + rb"?[A-Za-z]" + _SEP + rb"?[0-9]" + _SEP + rb"?[0-9]"
    rb"(?:" + _SEP + rb"?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])"
)


def _grouped(text: bytes, first: int = 4) -> bool:
    """Compact, or one kind of separator between groups of four (the last may be shorter,
    the first ``first`` long) or between every character."""
    separators = set(text.translate(None, _ALNUM))
    if not separators:
        return True
    if len(separators) > 1:
        return False
    lengths = [len(group) for group in text.split(bytes(separators))]
    if max(lengths) == 1:
        return True
    return lengths[0] == first and all(n == 4 for n in lengths[1:-1]) and 1 <= lengths[-1] <= 4


def _iban_span(match: re.Match[bytes]) -> Span | None:
    text = match.group()
    compact = text.translate(None, _SEP_BYTES).upper()
    length = IBAN_LENGTHS.get(compact[:2].decode())
    if length is None or len(compact) < length:
        return None
    # The pattern may have run on into a following word ("... 7466 SEK"), so cut after
    # the country's length in letters and digits; a separator must follow.
    end, seen = 0, 0
    while seen < length:
        seen += text[end] not in _SEP_BYTES
        end += 1
    if end < len(text) and text[end] not in _SEP_BYTES:
        return None
    if not _grouped(text[:end]) or not iban_valid(compact[:length].decode()):
        return None
    return match.start(), match.start() + end


class IbanDetector(_BuiltinDetector):
    """IBANs, compact or in groups of four, with the country's length and a valid mod 97."""

    name = "iban"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        for start, end in scan.number_windows():
            # A match may run on into the next IBAN ("... 00 and SE45 ..."): go on from
            # where the valid one ends, or one byte on.
            position = start
            while match := _IBAN.search(data, position, end):
                span = _iban_span(match)
                position = match.start() + 1 if span is None else span[1]
                if span is not None:
                    yield span


# --- payment cards -------------------------------------------------------------------------

_CARD = re.compile(rb"(?<![A-Za-z0-9_.+-])[0-9](?:" + _SEP + rb"?[0-9]){12,18}(?![A-Za-z0-9_])")


def _card_network_ok(digits: str) -> bool:
    """A plausible issuer prefix (IIN) for this length."""
    length = len(digits)
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return length == 16
    if two in (34, 37):  # American Express
        return length == 15
    if four == 6011 or 644 <= three <= 649 or two == 65 or 3528 <= four <= 3589 or two == 62:
        return 16 <= length <= 19  # Discover, JCB, UnionPay
    if 300 <= three <= 305 or two in (36, 38, 39):  # Diners Club
        return 14 <= length <= 19
    if four in (5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763):  # Maestro
        return 13 <= length <= 19
    return False


def _card_ok(text: bytes) -> bool:
    digits = text.translate(None, _NOT_DIGITS).decode()
    if not 13 <= len(digits) <= 19:
        return False
    separators = set(text.translate(None, _DIGIT_BYTES))
    # Groups of four (the last may be shorter), Amex's 4-6-5, or one digit at a time.
    if not _grouped(text) and not (
        len(separators) == 1
        and [len(group) for group in text.split(bytes(separators))] in ([4, 6, 5], [4, 6, 4])
    ):
        return False
    return _card_network_ok(digits) and luhn_valid(digits)


_CARD_GROUP = re.compile(rb"[0-9]+")
_MORE_GROUPS = re.compile(rb"(?:" + _SEP + rb"[0-9]{1,6}){0,6}(?![A-Za-z0-9_])")


def _card_within(data: bytes, start: int, end: int) -> Span | None:
    """A card among the digit groups of a longer grouped run ("ref 1 4111 1111 1111 1111",
    "4111111111111111.0"): starting at one of its first three groups, ending at any.
    Runs spelled out one digit at a time are not cut, so a row of digits stays one run."""
    more = _MORE_GROUPS.match(data, end)  # the regex stops at 19 digits: take in the rest
    end = more.end() if more else end
    groups = [match.span() for match in _CARD_GROUP.finditer(data, start, end)]
    if len(groups) < 2 or all(b - a == 1 for a, b in groups):
        return None
    for first in range(min(3, len(groups))):
        if first and data[groups[first][0] - 1] in b".,":
            continue  # the decimals of "0.4111111111111111"
        for last in range(len(groups) - 1, first - 1, -1):
            span = (groups[first][0], groups[last][1])
            if span != (start, end) and _card_ok(data[span[0] : span[1]]):
                return span
    return None


class PaymentCardDetector(_BuiltinDetector):
    """Card numbers of 13 to 19 digits (spaces or dashes), Luhn-valid with a known prefix."""

    name = "payment_card"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        windows = scan.number_windows()
        if not windows:
            return
        ibans = _union(IBAN.spans(scan))
        for start, end in windows:
            for match in _CARD.finditer(data, start, end):
                span: Span | None = match.span()
                if _overlaps(match.span(), ibans):
                    continue
                if not _card_ok(match.group()):
                    span = _card_within(data, *match.span())
                if span is not None and not _overlaps(span, ibans):
                    yield span


# --- national ids --------------------------------------------------------------------------

# Every supported shape in one pattern: six digits (the date), an optional two more (the
# century), an optional separator or century sign, 3-5 digits and an optional check
# character. Python then tries each country's rules on the whole match.
_NATIONAL_ID = re.compile(
    rb"(?<![A-Za-z0-9_+.-])[0-9]{6}(?:[0-9]{2})?[-+ .,/_A-FU-Y]?[0-9]{3,5}[0-9A-Y]?"
    rb"(?![A-Za-z0-9_])"
)
# 11 or 12 digits spelled out with one separator between each ("1 9 8 1 1 2 2 8 ...").
_SPELLED_ID = re.compile(
    rb"(?<![A-Za-z0-9_+.-])(?<![0-9]" + _SEP + rb")[0-9](" + _SEP + rb")[0-9](?:\1[0-9]){9,10}"
    rb"(?![A-Za-z0-9_]|" + _SEP + rb"[0-9])"
)
_DK_CPR = re.compile(r"[0-9]{6}[-. /_,]?[0-9]{4}")
_ID_SEPARATORS = str.maketrans(dict.fromkeys(" ./_,", "-"))
_ID_SPACES = str.maketrans(dict.fromkeys(" ./_,"))


def _national_id_ok(text: str, before: bytes) -> bool:
    separated = len(text) in (11, 13) and text[-5] in " ./_,"  # "811228 9874", "811228.9874"
    if separated and swedish_id_valid(text[:-5] + "-" + text[-4:]):
        return True
    if swedish_id_valid(text) or finnish_id_valid(text.translate(_ID_SEPARATORS)):
        return True
    if norwegian_id_valid(text.translate(_ID_SPACES)):  # DDMMYY IIIKK, with or without a space
        return True
    before = before.lower()
    if b"cpr" in before and _DK_CPR.fullmatch(text):  # Danish: a date, no checksum
        return _date_ok(None, int(text[2:4]), int(text[:2]), int(text[4:6]))
    return (b"bsn" in before or b"burgerservicenummer" in before) and bsn_valid(text)


class NationalIdDetector(_BuiltinDetector):
    """National identity numbers with a checksum or, failing one, a keyword.

    Swedish personnummer and samordningsnummer (Luhn), Norwegian fødselsnummer
    and D-number (two mod-11 digits), Finnish HETU (mod-31 check character),
    Danish CPR after the word "CPR" (a valid date; no checksum since 2007) and
    Dutch BSN after "BSN" (11-proof).
    """

    name = "national_id"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        windows = scan.number_windows()
        if not windows:
            return
        taken = _union(IBAN.spans(scan) + PAYMENT_CARD.spans(scan))
        for start, end in windows:
            for match in _NATIONAL_ID.finditer(data, start, end):
                before = data[max(0, match.start() - 24) : match.start()]
                if _national_id_ok(match.group().decode(), before) and not _overlaps(
                    match.span(), taken
                ):
                    yield match.span()
            for match in _SPELLED_ID.finditer(data, start, end):
                digits = match.group().translate(None, _SEP_BYTES).decode()
                if (swedish_id_valid(digits) or norwegian_id_valid(digits)) and not _overlaps(
                    match.span(), taken
                ):
                    yield match.span()


# --- phone numbers -------------------------------------------------------------------------

# One digit or a bracketed area code at a time, each optionally after one separator: the
# separator and digit classes never overlap, so there is exactly one way to match a run.
_PHONE = re.compile(
    rb"(?<![A-Za-z0-9_+.-])(?<![0-9][ .-])\+?(?:\([0-9]{1,4}\)|[0-9])"
    rb"(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9])){6,22}(?![A-Za-z0-9_]|[.-][0-9])"
)
_NANP = re.compile(r"(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}")
_DATE_PREFIX = re.compile(r"[0-9]{1,2}[ ./-][0-9]{1,2}[ ./-](?:19|20)[0-9]{2}")
_ISO_DATE = re.compile(r"(?:1[89]|20)[0-9]{2}-[01][0-9]-[0-3][0-9]")
_PHONE_GROUPS = re.compile(r"[ .()-]+")


def _phone_ok(text: str) -> bool:
    if text[0] not in "+0(" and not _NANP.fullmatch(text):  # only these start a phone number
        return False
    groups = [group for group in _PHONE_GROUPS.split(text.lstrip("+")) if group]
    separators = set(text) & set(" .-")
    # Dots only in 555.123.4567 and the French 01.23.45.67.89: not "01.02.2024 10",
    # "0081-1750.00098" or "+1.12345679". Brackets only near the start: an area code or
    # "+46 (0)70", not a DOI's "0020-0190(74)90003-9".
    if "." in separators and (
        len(separators) > 1 or not (_NANP.fullmatch(text) or list(map(len, groups)) == [2] * 5)
    ):
        return False
    bracket = text.find("(")
    if bracket >= 0 and sum(char.isdigit() for char in text[:bracket]) > 3:
        return False
    if _ISO_DATE.search(text):
        return False
    if text.startswith("+") or (text.startswith("00") and len(groups) > 1):
        body = text[1:] if text.startswith("+") else text[2:]
        digits = "".join(char for char in body.replace("(0)", "") if char.isdigit())
        return 8 <= len(digits) <= 15 and digits[0] != "0"
    if _NANP.fullmatch(text):
        return len(separators) <= 1 or text.startswith("(")
    digits = "".join(char for char in text if char.isdigit())
    if not 9 <= len(digits) <= 12 or digits[0] != "0" or digits[1] == "0":
        return False
    if len(groups) == 1:  # no separators: only a mobile number is specific enough
        return digits.startswith("07") and len(digits) in (10, 11)
    lengths = [len(group) for group in groups]
    if min(lengths) < 2 or lengths == [6, 4]:  # "0 0 0 ..." or a personnummer
        return False
    return not _DATE_PREFIX.match(text)


class PhoneDetector(_BuiltinDetector):
    """Phone numbers: ``+CC``/``00CC`` forms, NANP ``(555) 123-4567``, national ``0``-prefixed.

    Digits already counted as an IBAN, card or national id are not counted again.
    """

    name = "phone"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        windows = scan.number_windows()
        if not windows:
            return
        taken = _union(IBAN.spans(scan) + PAYMENT_CARD.spans(scan) + NATIONAL_ID.spans(scan))
        for start, end in windows:
            for match in _PHONE.finditer(data, start, end):
                if _phone_ok(match.group().decode()) and not _overlaps(match.span(), taken):
                    yield match.span()


# --- API keys and other credentials --------------------------------------------------------

# Matched where a token can start (a run's start, or after "=" or "/" in it): no lookbehind.
_KNOWN_TOKEN = re.compile(
    rb"""(?:
        sk-ant-[a-z]{2,12}[0-9]{2}-[A-Za-z0-9_-]{32,}      # Anthropic
      | (?P<loose>
            sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}  # OpenAI
          | glpat-[A-Za-z0-9_-]{20,}                         # GitLab
          | ek-[A-Za-z0-9_-]{20,}                            # Enclave
        )
      | gh[pousr]_[A-Za-z0-9]{36,}                          # GitHub
      | github_pat_[A-Za-z0-9_]{40,}
      | xox[abprs]-[A-Za-z0-9-]{11,}                        # Slack
      | (?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])            # AWS access key id
      | AIza[A-Za-z0-9_-]{35}                               # Google API key
      | [sr]k_live_[A-Za-z0-9]{20,}                         # Stripe live keys
      | hf_[A-Za-z0-9]{30,}                                 # Hugging Face
    )""",
    re.VERBOSE,
)
_TOKEN_BREAK = re.compile(rb"[=/]+")
_JWT = re.compile(
    rb"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{10,}\.ey[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)
# These two run on lower-cased windows (see _context_spans).
_AUTH_SCHEME = re.compile(
    rb"(?<![a-z])(?:(bearer)[ \t]{1,3}([a-z0-9._~+/-]{20,}=*)"
    rb"|(basic)[ \t]{1,3}([a-z0-9+/]{12,}={0,2})(?![a-z0-9+/=]))"
)
_ASSIGNMENT = re.compile(
    rb"""(?<![a-z0-9])(?:api[_-]?key|secret[_-]?key|client[_-]?secret|secret|access[_-]?key
      |access[_-]?token|auth[_-]?token|refresh[_-]?token|token|password|passwd)
    ["']?[ \t]{0,3}[:=][ \t]{0,3}["']?([a-z0-9+/_.~=-]{16,256})""",
    re.VERBOSE,
)
# One C call per window instead of a substring test per keyword.
_CONTEXT_WORD = re.compile(rb"bearer|basic|key|secret|token|passw")
_URL_CREDENTIALS = re.compile(rb"[^\s/:@]{1,64}:([^\s/:@,]{1,128})@[A-Za-z0-9.-]")
_PLACEHOLDERS = (
    b"your", b"example", b"xxxx", b"****", b"changeme", b"placeholder", b"redacted", b"dummy",
    b"<", b"[", b"${", b"{{", b"$(", b"%s",
)  # fmt: skip
_HEX = re.compile(rb"[0-9a-fA-F-]+")
_ALPHA_CHUNKS = re.compile(rb"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_LONG_LOWER = re.compile(rb"[a-z]{4,}")
_PIECES = re.compile(rb"[^-_/.]+")
# A word or CamelCase words ("lib", "python3", "OpenGVLab"). Each CamelCase part starts with
# upper case and ends at the next one, so there is one way to split (no backtracking blow-up).
_WORDY = re.compile(rb"(?:[a-z]{3,}|[a-z]*(?:[A-Z]+[a-z]{2,})+)[0-9]{0,2}")
_IMAGE_BASE64 = (b"iVBORw0KGgo", b"/9j/", b"R0lGOD", b"UklGR")  # PNG, JPEG, GIF, WebP
_GENERIC_MIN, _GENERIC_MAX = 24, 1024


def _char_classes(value: bytes) -> tuple[bool, bool, bool]:
    """Whether ``value`` has upper case, lower case and digits (all in C)."""
    return (
        value.lower() != value,
        value.upper() != value,
        len(value.translate(None, _DIGIT_BYTES)) != len(value),
    )


def _placeholder(value: bytes) -> bool:
    lowered = value.lower()
    return any(marker in lowered for marker in _PLACEHOLDERS)


def _entropy(value: bytes) -> float:
    """Shannon entropy in bits per character."""
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in Counter(value).values())


def _average_chunk(value: bytes) -> float:
    """Mean length of letter chunks split at case changes: ~2 in random text, 4+ in words."""
    chunks = _ALPHA_CHUNKS.findall(value)
    return sum(map(len, chunks)) / len(chunks) if chunks else 0.0


def _wordy_pieces(value: bytes) -> list[Span] | None:
    """The pieces between ``-_/.`` when one of them is a word (a path, a model id), else None."""
    pieces = [match.span() for match in _PIECES.finditer(value)]
    if len(pieces) > 1 and any(_WORDY.fullmatch(value, start, end) for start, end in pieces):
        return pieces
    return None


_URLSAFE = bytes.maketrans(b"-_", b"+/")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_LINE_BREAKS = str.maketrans(dict.fromkeys("\t\r\n"))


def _text(decoded: bytes, share: float) -> str | None:
    """``decoded`` as a string when it is UTF-8 with at least ``share`` printable."""
    if decoded.isascii():
        text = decoded.decode("ascii")
    else:
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if text.translate(_LINE_BREAKS).isprintable():
        return text
    printable = sum(char.isprintable() or char in "\t\r\n" for char in text)
    return text if text and printable >= share * len(text) else None


def _base64_text(value: bytes, share: float = 0.95) -> str | None:
    """The text that ``value`` (base64, standard or URL-safe) encodes, if it is text."""
    padded = value.translate(_URLSAFE).rstrip(b"=")
    padded += b"=" * (-len(padded) % 4)
    try:
        return _text(binascii.a2b_base64(padded, strict_mode=True), share)
    except binascii.Error:
        return None


def _decodes_to_text(value: bytes) -> bool:
    """Base64 (standard or URL-safe) of printable UTF-8: encoded text, not a key."""
    return _base64_text(value) is not None


_DECODE_MIN = 12  # base64 of 9 bytes, hex of 6: shorter holds no value we look for


def _decoded_texts(data: bytes, runs: list[Span]) -> list[str]:
    """What the hex and base64 runs among ``runs`` decode to, where it is text.

    Padding ends a base64 value, so a run is cut at each ``=`` ("key=<base64>==").
    """
    texts = []
    for start, end in runs:
        for piece in data[start:end].split(b"="):
            if len(piece) < _DECODE_MIN:
                continue
            text = None
            if not piece.translate(None, _HEX_DIGITS) and len(piece) % 2 == 0:
                text = _text(bytes.fromhex(piece.decode()), 0.9)
            if text is None:
                text = _base64_text(piece, 0.9)
            if text is not None:
                texts.append(text)
    return texts


def looks_random(token: bytes) -> bool:
    """The generic rule: whether one token of ``[A-Za-z0-9+/_=-]`` looks like a secret.

    24 to 1024 characters (padding aside); upper case, lower case and digits; not
    hex; few ``-``/``_``; letter chunks averaging under 3 characters and under 40%
    of the token in lower-case runs of 4+ (words fail both); entropy of at least
    0.8 * log2(length) bits per character; not base64 of printable text.
    """
    core = token.rstrip(b"=")
    length = len(core)
    if not _GENERIC_MIN <= length <= _GENERIC_MAX or not all(_char_classes(core)):
        return False
    if _HEX.fullmatch(core) or core.count(b"-") + core.count(b"_") > 3 + length // 16:
        return False
    if core.startswith(_IMAGE_BASE64) or _average_chunk(core) >= 3.0:
        return False
    if sum(map(len, _LONG_LOWER.findall(core))) > 0.4 * length:
        return False
    if _entropy(core) < 0.8 * math.log2(length):
        return False
    return not _decodes_to_text(token)


def _generic_candidates(data: bytes, start: int, end: int) -> Iterator[Span]:
    token = data[start:end]
    if not _GENERIC_MIN <= len(token) <= _GENERIC_MAX or not all(_char_classes(token)):
        return
    pieces = _wordy_pieces(token)
    if pieces is None:
        if looks_random(token):
            yield start, end
        return
    for piece_start, piece_end in pieces:  # judge each piece of a path or an id on its own
        if piece_end - piece_start >= _GENERIC_MIN and looks_random(token[piece_start:piece_end]):
            yield start + piece_start, start + piece_end


def _assigned_secret_ok(value: bytes, data: bytes, end: int) -> bool:
    """A value after ``api_key=`` or ``"token":``: may be short or hex, must not be code."""
    upper, lower, digit = _char_classes(value)
    if not digit or not (upper or lower) or _placeholder(value):
        return False
    if data[end : end + 1] == b"(" or _wordy_pieces(value) is not None:  # a call, an identifier
        return False
    if upper and lower and _average_chunk(value) >= 3.0:  # CamelCase
        return False
    return _entropy(value) >= 3.0


def _url_password_ok(value: bytes) -> bool:
    """``scheme://user:PASSWORD@host``, but not ``tiger``, ``password`` or ``${DB_PASSWORD}``."""
    if len(value) < 8 or _placeholder(value):
        return False
    upper, lower, digit = _char_classes(value)
    other = len(value.translate(None, _TOKEN_CHARS)) > 0
    return upper + lower + digit + other >= 2


def _known_token_ok(match: re.Match[bytes]) -> bool:
    if match.group("loose") is None:
        return True
    # sk-/ek-/glpat- also start hyphenated words ("sk-learn-compatible-..."): want a digit
    # and one long unbroken chunk.
    token = match.group()
    chunks = token.replace(b"_", b"-").split(b"-")
    return _char_classes(token)[2] and max(map(len, chunks)) >= 16


def _auth_value_ok(scheme: bytes, value: bytes) -> bool:
    if scheme == b"basic":  # base64 of "user:password"
        try:
            return b":" in binascii.a2b_base64(value, strict_mode=True)
        except binascii.Error:
            return False
    upper, lower, digit = _char_classes(value)
    return digit and (upper or lower) and not _placeholder(value)


def _context_spans(data: bytes, runs: list[Span]) -> Iterator[Span]:
    """``Bearer``/``Basic`` credentials and ``api_key=...`` values in the runs' windows.

    A window is a run and the 48 bytes before it, lower-cased, so the keywords match in
    any case without ``re.IGNORECASE`` (slow); values keep their case from ``data``.
    """
    for start, end in _merge(((start - 48, end) for start, end in runs), len(data)):
        window = data[start:end].lower()
        if not _CONTEXT_WORD.search(window):
            continue
        if b"bearer" in window or b"basic" in window:
            for match in _AUTH_SCHEME.finditer(window):
                group = 2 if match.group(1) else 4
                value_start, value_end = start + match.start(group), start + match.end(group)
                if _auth_value_ok(match.group(group - 1), data[value_start:value_end]):
                    yield value_start, value_end
        for match in _ASSIGNMENT.finditer(window):
            value_start, value_end = start + match.start(1), start + match.end(1)
            if _assigned_secret_ok(data[value_start:value_end], data, value_end):
                yield value_start, value_end


# The first two characters of _KNOWN_TOKEN's prefixes: a set lookup rejects most runs.
_KNOWN_HEADS = frozenset(b"sk gh gi gl xo AK AS AI rk hf ek".split())


def _known_spans(token: bytes, offset: int) -> Iterator[Span]:
    """Known-prefix tokens in one run (``token`` starts at ``offset`` in the text).

    A token starts the run or follows "=" or "/" in it ("KEY=sk-...", ".../xoxb-...").
    """
    pieces = token.replace(b"=", b"/").split(b"/") if b"=" in token or b"/" in token else [token]
    position = 0
    for piece in pieces:
        if piece[:2] in _KNOWN_HEADS:
            match = _KNOWN_TOKEN.match(token, position)
            if match and _known_token_ok(match):
                yield offset + match.start(), offset + match.end()
        position += len(piece) + 1


class ApiKeyDetector(_BuiltinDetector):
    """API keys, tokens and other credentials; the module docstring lists what counts."""

    name = "api_key"

    def _match(self, scan: _Scan) -> Iterator[Span]:
        data = scan.data
        known: list[Span] = []
        if b"@" in data and b"://" in data:
            for position in _occurrences(data, b"://"):
                url = _URL_CREDENTIALS.match(data, position + 3)
                if url and _url_password_ok(url.group(1)):
                    known.append(url.span(1))
        runs = scan.token_runs()
        mixed_case: list[Span] = []  # only these can pass the generic rule
        for start, end in runs:
            token = data[start:end]
            if token.startswith(b"eyJ"):  # a JWT's header is a run of its own
                jwt = _JWT.match(data, start)
                if jwt:
                    known.append(jwt.span())
                    continue
            known.extend(_known_spans(token, start))
            if len(token) >= _GENERIC_MIN and not token.islower() and not token.isupper():
                mixed_case.append((start, end))
        if runs:
            known.extend(_context_spans(data, runs))
        yield from known
        if mixed_case:
            taken = _union(known + PRIVATE_KEY.spans(scan))
            for run in mixed_case:
                if not _overlaps(run, taken):
                    yield from _generic_candidates(data, *run)


# --- the set -------------------------------------------------------------------------------

API_KEY = ApiKeyDetector()
PRIVATE_KEY = PrivateKeyDetector()
EMAIL = EmailDetector()
PHONE = PhoneDetector()
IBAN = IbanDetector()
PAYMENT_CARD = PaymentCardDetector()
NATIONAL_ID = NationalIdDetector()

_BUILTINS: dict[str, _BuiltinDetector] = {
    detector.name: detector
    for detector in (API_KEY, PRIVATE_KEY, EMAIL, PHONE, IBAN, PAYMENT_CARD, NATIONAL_ID)
}
DETECTOR_NAMES: tuple[str, ...] = tuple(_BUILTINS)


class DetectorSet:
    """Runs the enabled detectors; only types and counts come out, never values."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        """Enable ``names`` (default: every built-in); an unknown name is a ``ValueError``."""
        chosen = DETECTOR_NAMES if names is None else tuple(dict.fromkeys(names))
        unknown = [name for name in chosen if name not in _BUILTINS]
        if unknown:
            raise ValueError(
                f"Unknown detector(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(DETECTOR_NAMES)}."
            )
        self._detectors = tuple(_BUILTINS[name] for name in sorted(chosen))

    @property
    def names(self) -> tuple[str, ...]:
        """The enabled detectors' names, sorted."""
        return tuple(detector.name for detector in self._detectors)

    def scan(self, texts: Iterable[str]) -> list[Finding]:
        """Findings (sorted by type, counts > 0) over all ``texts`` of one request.

        The texts are normalised (:mod:`enclave.gateway.normalize`) and scanned as one
        conversation; what their base64 and hex runs decode to is scanned too, and so
        is each place where one text ends and the next begins.
        """
        if not self._detectors:
            return []
        parts = [normalize(texts)] if isinstance(texts, str) else list(map(normalize, texts))
        totals: Counter[str] = Counter()
        self._count(_Scan("\n".join(parts)), totals, _DECODE_DEPTH)
        if len(parts) > 1:
            self._count_joins(parts, totals)
        return [
            Finding(detector.name, totals[detector.name])
            for detector in self._detectors
            if totals[detector.name]
        ]

    def _count(self, scan: _Scan, totals: Counter[str], depth: int) -> None:
        for detector in self._detectors:
            totals[detector.name] += detector.count(scan)
        if depth:
            decoded = _decoded_texts(scan.data, scan.token_runs())
            if decoded:
                self._count(_Scan(normalize("\n".join(decoded))), totals, depth - 1)

    def _count_joins(self, parts: list[str], totals: Counter[str]) -> None:
        """Values that run from the end of one text into the start of the next.

        Each such place is tried glued directly and with one space (a value split at a
        group boundary); a span counts once for its place, and only if it crosses the
        join, so values wholly inside one text are not counted twice.
        """
        detectors = [d for d in self._detectors if d.name in _JOINED]
        if not detectors:
            return
        pieces: list[str] = []
        starts: list[int] = []  # where each piece starts in the scanned bytes
        places: list[tuple[int, int, int]] = []  # (tail end, head start, place) in bytes
        offset = 0
        for place, (left, right) in enumerate(itertools.pairwise(parts)):
            tail, head = left[-_JOIN_EDGE:], right[:_JOIN_EDGE]
            if not _may_continue(tail.rstrip()[-1:], head.lstrip()[:1]):
                continue
            size = len(tail.encode("utf-8", "surrogatepass"))
            for glue in ("", " "):
                starts.append(offset)
                pieces.append(tail + glue + head)
                places.append((offset + size, offset + size + len(glue), place))
                offset += len(pieces[-1].encode("utf-8", "surrogatepass")) + 1
        if not pieces:
            return
        scan = _Scan("\n".join(pieces))
        for detector in detectors:
            found: Counter[tuple[int, int]] = Counter()  # (place, glue) -> spans
            for start, end in detector.spans(scan):
                index = bisect.bisect_right(starts, start) - 1
                if index >= 0:
                    tail_end, head_start, place = places[index]
                    if start < tail_end and end > head_start:
                        found[place, index] += 1
            best: dict[int, int] = {}
            for (place, _), count in found.items():
                best[place] = max(best.get(place, 0), count)
            totals[detector.name] += sum(best.values())


_DECODE_DEPTH = 2  # base64 of base64 is found; a third layer is not
# Values worth joining across texts; a phone number or an e-mail address split between
# two strings is more often two unrelated fragments.
_JOINED = frozenset({"iban", "payment_card", "national_id", "api_key", "private_key"})
_JOIN_EDGE = 128  # characters from each side of a join
_VALUE_PUNCTUATION = frozenset("+/=_-.,")


def _may_continue(last: str, first: str) -> bool:
    """Whether a value could run on from ``last`` (end of a text) to ``first``: both are
    letters, digits or ``+/=_-.,``, and a "." or "," there is between digits, not the end
    of a sentence."""
    if not last or not first:
        return False
    if not (last.isalnum() or last in _VALUE_PUNCTUATION):
        return False
    if not (first.isalnum() or first in _VALUE_PUNCTUATION):
        return False
    if last in ".,":
        return first.isdigit()
    return last.isdigit() if first in ".," else True
