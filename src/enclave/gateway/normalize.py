"""One spelling for what a reader sees as the same characters, before detection.

Text pasted from PDFs, spreadsheets and web pages carries no-break spaces,
full-width digits and soft hyphens as a matter of course, and an attacker can
add zero-width characters or a Cyrillic letter on purpose. :func:`normalize`
folds all of these into the ASCII forms the detectors look for:

1. **NFKC**: full-width and mathematical digits and letters, circled and
   superscript digits, ligatures and the compatibility spaces become their
   plain forms.
2. **Format characters removed**: every character of category Cf (zero-width
   space, zero-width joiner and non-joiner, word joiner, soft hyphen, BOM,
   direction marks, tag characters), plus variation selectors and the
   combining grapheme joiner.
3. **Digits, spaces and dashes to ASCII**: every Unicode decimal digit
   (Arabic-Indic, Devanagari, Thai, ...) becomes ``0``-``9``; every space
   separator a space, line and paragraph separators a newline; every dash and
   the minus signs a ``-``.
4. **Look-alike letters to Latin**, only next to an ASCII letter or digit
   (an IBAN's ``SE`` written with a Cyrillic capital Ie becomes ``SE``): a small
   table of Cyrillic and Greek letters that look like Latin ones. Russian or
   Greek prose stays as it is.

What it costs: ASCII text, nearly every request, returns at once
(:meth:`str.isascii` answers in C without a copy). Other text is encoded once
and one ``bytes.translate`` finds whether any character's first UTF-8 byte is
one that steps 1-3 could change; Swedish, German or French letters are not, so
that text returns too. Otherwise one regex (a character class over the Basic
Multilingual Plane, which ``re`` tests in constant time per character) finds
the runs to fold, and NFKC runs on those runs only, not on the whole text:
NFKC over a page of Chinese costs ~100 µs, the class ~10 µs. Step 4 runs only
where a Cyrillic or Greek byte touches an ASCII letter or digit.

The tables are built from :mod:`unicodedata` on first use (~30 ms, once), so
they follow the running Python's Unicode version. The result is only ever
scanned: offsets move, so nothing maps a finding back to the original text.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass

# Cyrillic and Greek letters that look like Latin ones (capitals and lower case).
_CONFUSABLES = str.maketrans(
    "АВСЕНІЈКМОРЅТХУҮԚԜ"  # Cyrillic capitals
    "асеіјорѕхуһԁԛԝӏ"  # noqa: RUF001 (Cyrillic lower case)
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"  # noqa: RUF001 (Greek capitals)
    "οινκρτχυ",  # Greek lower case
    "ABCEHIJKMOPSTXYYQWaceijopsxyhdqwlABEZHIKMNOPTYXoivkptxu",
)
_CONFUSABLE_CLASS = "".join(map(chr, _CONFUSABLES))
# A run of look-alikes right after an ASCII letter or digit, or a run that starts right
# before one. Each run is tried from its start only, possessively, so this stays linear.
_MIXED = re.compile(
    f"(?<=[A-Za-z0-9])[{_CONFUSABLE_CLASS}]++"
    f"|(?<![{_CONFUSABLE_CLASS}])[{_CONFUSABLE_CLASS}]++(?=[A-Za-z0-9])"
)
_CONFUSABLE_LEADS = frozenset(char.encode()[0] for char in _CONFUSABLE_CLASS)
# ASCII letters and digits -> "a", lead bytes of the look-alikes -> "c", the rest -> " ";
# continuation bytes are deleted, so "S", Cyrillic Ie, "4" become "aca": a plain find.
_ADJACENCY = bytes(
    ord("a")
    if chr(byte).isascii() and chr(byte).isalnum()
    else ord("c")
    if byte in _CONFUSABLE_LEADS
    else ord(" ")
    for byte in range(256)
)
_CONTINUATION = bytes(range(0x80, 0xC0))
_ASTRAL = re.compile("[\U00010000-\U0010ffff]+")


@dataclass(frozen=True, slots=True)
class _Tables:
    fold: dict[int, str]  # steps 2 and 3: code point -> replacement
    special: re.Pattern[str]  # runs of BMP characters that steps 1-3 change
    astral: frozenset[int]  # the same outside the BMP
    not_suspect: bytes  # bytes that start none of them, for bytes.translate


@functools.cache
def _tables() -> _Tables:
    fold: dict[int, str] = {}
    changed: list[int] = []
    # Planes 0 and 1 hold every digit, space, dash and compatibility character; plane 14
    # the tag characters and the variation selectors supplement.
    for code in itertools.chain(range(0x80, 0x20000), range(0xE0000, 0xE01F0)):
        char = chr(code)
        category = unicodedata.category(char)
        if category == "Cf":
            fold[code] = ""
        elif category == "Nd":
            fold[code] = str(unicodedata.decimal(char))
        elif category == "Zs":
            fold[code] = " "
        elif category in ("Zl", "Zp"):
            fold[code] = "\n"
        elif category == "Pd" or code in (0x2212, 0x2796):  # dashes, minus signs
            fold[code] = "-"
        elif code == 0x34F or 0xFE00 <= code <= 0xFE0F or code >= 0xE0100:
            fold[code] = ""  # the combining grapheme joiner, variation selectors
        elif unicodedata.decomposition(char) and unicodedata.normalize("NFKC", char) != char:
            changed.append(code)  # only characters with a decomposition can change
    changed.extend(fold)
    leads = {chr(code).encode("utf-8")[0] for code in changed}
    return _Tables(
        fold=fold,
        special=re.compile(f"[{_char_class(sorted(c for c in changed if c < 0x10000))}]+"),
        astral=frozenset(code for code in changed if code >= 0x10000),
        not_suspect=bytes(byte for byte in range(256) if byte not in leads),
    )


def _char_class(codes: list[int]) -> str:
    """A regex character class body for sorted ``codes``, as ranges."""
    parts = []
    for _, group in itertools.groupby(enumerate(codes), lambda item: item[1] - item[0]):
        run = [code for _, code in group]
        first, last = re.escape(chr(run[0])), re.escape(chr(run[-1]))
        parts.append(first if run[0] == run[-1] else f"{first}-{last}")
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _fold_run(run: str) -> str:
    """NFKC, then steps 2 and 3, on one run (runs repeat: a full-width comma, a dash, an emoji)."""
    tables = _tables()
    if run[0] >= "\U00010000" and tables.astral.isdisjoint(map(ord, run)):
        return run  # emoji and other astral characters that nothing changes
    return unicodedata.normalize("NFKC", run).translate(tables.fold)


def _fold(match: re.Match[str]) -> str:
    return _fold_run(match.group())


def _latin(match: re.Match[str]) -> str:
    return match.group().translate(_CONFUSABLES)


def normalize(text: str) -> str:
    """``text`` as the detectors should read it (see the module docstring)."""
    if text.isascii():
        return text
    data = text.encode("utf-8", "surrogatepass")
    tables = _tables()
    suspects = data.translate(None, tables.not_suspect)
    if suspects:
        text = tables.special.sub(_fold, text)
        if max(suspects) >= 0xF0:
            text = _ASTRAL.sub(_fold, text)
        data = text.encode("utf-8", "surrogatepass")
    adjacency = data.translate(_ADJACENCY, _CONTINUATION)
    if b"ac" in adjacency or b"ca" in adjacency:
        text = _MIXED.sub(_latin, text)
    return text
