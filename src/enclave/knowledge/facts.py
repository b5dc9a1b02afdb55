"""The checkable content of a sentence, and whether a passage supports it.

A citation is only worth something if the cited passage says what the
sentence says. Words in common prove little ("the cluster" is in a passage
about stopping containers too), so a sentence is reduced to what can be
checked against a source:

- **numbers** with their scale and percentages normalised ("a hundred" =
  100, "1.5 million" = 1500000, "26 percent" = "26%" = 26);
- **dates**: full dates, months and years (``1998-03-12``, ``1998-03``,
  ``1998``);
- **names**: capitalised words that are not the first of the sentence,
  compared without case or a possessive ("Ernaux's" = "ERNAUX");
- **quoted phrases** of two words or more;
- **rare words**: content words that are uncommon in English (word
  frequency below :data:`RARE_ZIPF`), other than the question's own.

:func:`supports` says whether one passage holds all of it: every number,
date, name and quote, and most of the rare words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from wordfreq import zipf_frequency

from enclave.knowledge.text import STOPWORDS, content_words

# Words rarer than this Zipf frequency (about 1 in 30,000 words of English) need a source.
RARE_ZIPF = 4.5
# A word this rare that starts a sentence is still a name ("Reger, the security officer").
NAME_ZIPF = 3.0
# The share of a sentence's rare words a supporting passage must have.
RARE_SUPPORT = 0.5

MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = r"(january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.?"  # noqa: E501
_YEAR = r"(1[0-9]{3}|20[0-9]{2})"
DATE_PATTERNS = (
    re.compile(rf"\b{_YEAR}-(\d{{2}})-(\d{{2}})\b"),  # 1998-03-12
    re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\s+{_YEAR}\b", re.I),
    re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_YEAR}\b", re.I),
    re.compile(rf"\b{_MONTH}\s+(?:of\s+)?{_YEAR}\b", re.I),
)
YEAR = re.compile(rf"\b{_YEAR}\b")
_MONTH_NAME = _MONTH.replace("\\.?", "")
DAY_OF_MONTH = re.compile(
    rf"\b(?:the\s+)?(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<month>{_MONTH[1:-4]})\b"
    rf"|\b(?P<month2>{_MONTH[1:-4]})\.?\s+(?P<day2>\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*,?\s*\d{{3}})",
    re.I,
)
ERA_YEAR = re.compile(
    r"\b(?:A\.?D\.?|B\.?C\.?)\s*(?P<year>\d{1,4})\b|\b(?P<year2>\d{1,4})\s*(?:A\.?D|B\.?C)\b"
    r"|\b(?P<century>\d{1,2})(?:st|nd|rd|th)\s+century\b",
    re.I,
)
ORDINAL = re.compile(r"\b\d+(?:st|nd|rd|th)\b", re.I)
# A time of day: "4:00", "12:05", "4 o'clock", "4 p.m."
TIME = re.compile(r"\b(\d{1,2})(?::(\d{2})\b|\s*(?:o'clock|[ap]\.?m\.?)(?!\w))", re.I)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALES = {
    "hundred": 100,
    "thousand": 1_000,
    "million": 1_000_000,
    "billion": 1_000_000_000,
    "trillion": 1_000_000_000_000,
}
_NUMBER_WORD = "|".join([*_UNITS, *_TENS, *_SCALES, "dozen", "a", "an", "and"])
# A run of number words ("twenty-five", "a hundred and twelve", "three million").
NUMBER_WORDS = re.compile(
    rf"\b(?:{_NUMBER_WORD})(?:[\s-]+(?:{_NUMBER_WORD}))*\b",
    re.I,
)
# Digits with thousands separators or a decimal part, then an optional scale or percent.
NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?:\s*(%|percent\b|per\s+cent\b|thousand\b|million\b|billion\b|trillion\b)|(bn|m|k)\b)?",
    re.I,
)
FILE_NAME = re.compile(r"\b[\w./-]+\.(?:md|markdown|txt|pdf|docx?|html?|csv|json|xlsx?)\b", re.I)
QUOTED = re.compile(r"[\"\u201c]([^\"\u201c\u201d]{3,200})[\"\u201d]")
CAPITALISED = re.compile(r"\b[A-ZÀ-ÖØ-Þ][\w'\u2019.-]*")
# Where a new sentence (or a speaker's turn, or a list item) starts inside one.
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*(?:[-*+]|\d+\.)?\s*|[\"\u201c(]\s*)$")
_HONORIFIC = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sen|Rep|Gov|Gen|Jr|Sr)\.\s+$")
# Capitalised words that are grammar or calendar, not names.
NOT_NAMES = (
    frozenset(STOPWORDS)
    | frozenset(MONTHS)
    | frozenset(WEEKDAYS)
    | {"i", "i'm", "i've", "i'd", "i'll", "yes", "okay", "ok", "oh", "well", "mr", "mrs", "ms"}
)
# Words an answer uses about its sources, not about the world.
GENERIC = frozenset(
    content_words(
        "source sources document documents passage passages mention mentions mentioned say says "
        "said state states stated according information provided provide answer question text "
        "find found cannot know unknown sure context given based"
    )
)


def _canonical(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _words_value(words: list[str]) -> float | None:
    """The value of a run of number words, or None ("a" alone, "and" alone)."""
    total, current, seen = 0.0, 0.0, False
    for word in words:
        if word in ("a", "an"):
            current = max(current, 1.0)
            continue
        if word == "and":
            continue
        if word == "dozen":
            current = (current or 1.0) * 12
            seen = True
        elif word in _UNITS:
            current += _UNITS[word]
            seen = True
        elif word in _TENS:
            current += _TENS[word]
            seen = True
        elif word == "hundred":
            current = (current or 1.0) * 100
            seen = True
        elif word in _SCALES:
            total += (current or 1.0) * _SCALES[word]
            current, seen = 0.0, True
    return total + current if seen else None


def numbers(text: str) -> set[str]:
    """The numbers in ``text``, normalised: "1,200" and "one thousand two hundred" are
    both "1200"; "26 percent" and "26%" are both "26%"; "1.5 million" is "1500000"."""
    found: set[str] = set()
    for match in NUMBER.finditer(text):
        value = float(match.group(1).replace(",", "") + (match.group(2) or ""))
        suffix = (match.group(3) or match.group(4) or "").lower().replace(" ", "")
        if suffix in ("%", "percent"):
            found.add(_canonical(value) + "%")
            found.add(_canonical(value))
            continue
        scale = {"thousand": 1e3, "k": 1e3, "million": 1e6, "m": 1e6, "bn": 1e9, "billion": 1e9}
        value *= scale.get(suffix, 1e12 if suffix == "trillion" else 1.0)
        found.add(_canonical(value))
    for match in NUMBER_WORDS.finditer(text):
        if re.search(r"\d[\d,.]*\s*$", text[max(0, match.start() - 24) : match.start()]):
            continue  # the scale of a number in digits ("1.5 million"), counted above
        words = [w for w in re.split(r"[\s-]+", match.group().lower()) if w]
        words_value = _words_value(words)
        if words_value is None or (words_value == 1 and words[-1] in ("a", "an", "one")):
            continue  # "a", "one" alone: an article or a pronoun more often than a count
        tail = text[match.end() : match.end() + 12].lower()
        if re.match(r"\s*(%|percent|per\s+cent)", tail):
            found.add(_canonical(words_value) + "%")
        found.add(_canonical(words_value))
    return found


def counts(text: str) -> set[str]:
    """The numbers of ``text`` that can be a count or an amount: not years, not the day
    of a date ("the 5th of May", "November 18"), not ordinals ("21st")."""
    spans = [m.span() for pattern in DATE_PATTERNS for m in pattern.finditer(text)]
    spans += [m.span() for m in DAY_OF_MONTH.finditer(text)]
    spans += [m.span() for m in YEAR.finditer(text)]
    spans += [m.span() for m in ORDINAL.finditer(text)]
    kept = "".join(
        " " if any(start <= index < end for start, end in spans) else char
        for index, char in enumerate(text)
    )
    return numbers(kept)


def dates(text: str) -> set[str]:
    """The dates in ``text``: ``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY``, and times of
    day as ``H:MM``."""
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for index, pattern in enumerate(DATE_PATTERNS):
        for match in pattern.finditer(text):
            if any(start <= match.start() < end for start, end in spans):
                continue
            spans.append(match.span())
            groups = match.groups()
            if index == 0:
                found.add(f"{groups[0]}-{groups[1]}-{groups[2]}")
            elif index == 1:
                day, month, year = groups
                found.add(f"{year}-{MONTHS[month.lower().rstrip('.')]:02d}-{int(day):02d}")
            elif index == 2:
                month, day, year = groups
                found.add(f"{year}-{MONTHS[month.lower().rstrip('.')]:02d}-{int(day):02d}")
            else:
                month, year = groups
                found.add(f"{year}-{MONTHS[month.lower().rstrip('.')]:02d}")
    for match in YEAR.finditer(text):
        if not any(start <= match.start() < end for start, end in spans):
            found.add(match.group())
    for match in TIME.finditer(text):
        found.add(f"{int(match.group(1))}:{match.group(2) or '00'}")
    for match in DAY_OF_MONTH.finditer(text):  # "the 30th of November", "November 25"
        if any(start < match.end() and match.start() < end for start, end in spans):
            continue
        day = match.group("day") or match.group("day2")
        month = match.group("month") or match.group("month2")
        found.add(f"--{MONTHS[month.lower().rstrip('.')]:02d}-{int(day):02d}")
    for match in ERA_YEAR.finditer(text):  # "A.D. 800", "the 9th century"
        if match.group("century"):
            found.add(f"{match.group('century')}c")
        else:
            found.add(match.group("year") or match.group("year2"))
    return found


def name_key(word: str) -> str:
    """A name compared without case, a possessive or a trailing full stop."""
    word = word.lower().rstrip(".")
    for ending in ("'s", "\u2019s", "'", "\u2019"):
        if word.endswith(ending):
            return word[: -len(ending)]
    return word


# A transcript's speaker label: "Mr. NORTH:", "Ms. HALL:", "BOREN:".
SPEAKER = re.compile(
    r"(?:^|(?<=\n))\s*(?:(?:Mr|Mrs|Ms|Dr|Sen|Rep)\.\s+)?[A-Z][A-Z'-]+(?:\s+[A-Z][A-Z'-]+)?:"
)


def name_runs(text: str, exclude: frozenset[str] = frozenset()) -> set[str]:
    """Runs of consecutive names, normalised and without titles: "Colonel Oliver North"
    is "oliver north", "the European Economic Area" is "european economic area". A run
    made only of names in ``exclude`` (the question's) is left out."""
    found = names(text)
    runs: list[list[str]] = []
    last_end = -1
    for match in CAPITALISED.finditer(text):
        key = name_key(match.group())
        if key not in found:
            last_end = -1
            continue
        if last_end >= 0 and text[last_end : match.start()].strip() == "" and runs:
            runs[-1].append(key)
        else:
            runs.append([key])
        last_end = match.end()
    cleaned = set()
    for run in runs:
        while run and run[0] in TITLES:
            run = run[1:]
        if run and not set(run) <= exclude:
            cleaned.add(" ".join(run))
    return cleaned


def without_speaker(text: str) -> str:
    """``text`` without transcript speaker labels ("Ms. HALL:"), which name who speaks,
    not what is said."""
    return SPEAKER.sub(" ", text)


# Words before a surname that are a rank or a title, not a first name.
TITLES = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "miss",
        "mister",
        "dr",
        "sir",
        "lady",
        "lord",
        "the",
        "colonel",
        "col",
        "lieutenant",
        "lt",
        "general",
        "gen",
        "admiral",
        "adm",
        "commander",
        "cmdr",
        "captain",
        "capt",
        "major",
        "sergeant",
        "senator",
        "sen",
        "representative",
        "rep",
        "congressman",
        "congresswoman",
        "chairman",
        "chair",
        "director",
        "secretary",
        "president",
        "judge",
        "justice",
        "professor",
        "prof",
        "ambassador",
        "governor",
        "gov",
        "minister",
        "saint",
        "st",
        "father",
        "brother",
        "sister",
        "agent",
        "officer",
    ]
)


def names(text: str) -> set[str]:
    """Capitalised words that are not the first of a sentence or a turn, nor grammar,
    nor a transcript's speaker label."""
    found = set()
    labels = [match.span() for match in SPEAKER.finditer(text)]
    for match in CAPITALISED.finditer(text):
        if any(start <= match.start() < end for start, end in labels):
            continue
        key = name_key(match.group())
        if len(key) < 2 or key in NOT_NAMES or key.isdigit():
            continue
        before = text[max(0, match.start() - 8) : match.start()]
        starts = _SENTENCE_START.search(before) and not _HONORIFIC.search(before)
        if starts and zipf_frequency(key, "en") >= NAME_ZIPF:
            continue  # "Then", "Secretary": a common word that starts the sentence
        found.add(key)
    return found


def _squeezed(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def quotes(text: str) -> set[str]:
    """Quoted phrases of two words or more, lower-cased, punctuation dropped."""
    return {_squeezed(m.group(1)) for m in QUOTED.finditer(text) if len(m.group(1).split()) >= 2}


@lru_cache(maxsize=65536)
def is_rare(word: str) -> bool:
    """Whether a (lower-case) word is uncommon enough in English to need a source."""
    return zipf_frequency(word, "en") < RARE_ZIPF


@dataclass(frozen=True, slots=True)
class Facts:
    """What a sentence asserts that a source can be checked for."""

    numbers: frozenset[str] = field(default_factory=frozenset)
    dates: frozenset[str] = field(default_factory=frozenset)
    names: frozenset[str] = field(default_factory=frozenset)
    quotes: frozenset[str] = field(default_factory=frozenset)
    rare_words: frozenset[str] = field(default_factory=frozenset)

    @property
    def checkable(self) -> bool:
        """Whether there is anything to check (a bare "I hope this helps" has not)."""
        return bool(self.numbers or self.dates or self.names or self.quotes or self.rare_words)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "numbers": sorted(self.numbers),
            "dates": sorted(self.dates),
            "names": sorted(self.names),
            "quotes": sorted(self.quotes),
            "rare_words": sorted(self.rare_words),
        }


def facts(sentence: str, *, question: str = "") -> Facts:
    """The checkable content of ``sentence``. Words of ``question`` are not rare words:
    an answer repeating the question proves nothing, and is not a claim to check."""
    asked = content_words(question)
    sentence = FILE_NAME.sub(" ", sentence)  # "leave.md: ..." names a source, asserts nothing
    found_names = names(sentence)
    rare = {
        word
        for word in content_words(sentence)
        if word not in asked
        and word not in GENERIC
        and word not in found_names
        and not word.isdigit()
        and not NUMBER_WORDS.fullmatch(word)
        and is_rare(word)
    }
    return Facts(
        frozenset(numbers(sentence)),
        frozenset(dates(sentence)),
        frozenset(found_names),
        frozenset(quotes(sentence)),
        frozenset(rare),
    )


@dataclass(frozen=True, slots=True)
class Evidence:
    """A passage's text, prepared once for checking many sentences against it."""

    numbers: frozenset[str]
    dates: frozenset[str]
    words: frozenset[str]  # name keys of every word, and the content words
    squeezed: str

    @classmethod
    def of(cls, text: str) -> Evidence:
        tokens = {name_key(word) for word in re.findall(r"[\w'\u2019.-]+", text)}
        return cls(
            frozenset(numbers(text)),
            frozenset(dates(text)),
            frozenset(tokens | content_words(text)),
            f" {_squeezed(text)} ",
        )


def _name_in(name: str, words: Iterable[str]) -> bool:
    """A name matches a word of the passage allowing for inflection ("Sweden's", "Ernaux")."""
    for word in words:
        if word == name:
            return True
        if len(name) >= 4 and len(word) >= 4:
            short, long = sorted((name, word), key=len)
            if long.startswith(short) and len(long) - len(short) <= 2:
                return True
    return False


def _same_date(claimed: str, found: str) -> bool:
    """A claimed date is held by a passage's date as precise or more ("1998" by
    "1998-03-12"; "--11-30", a day without its year, by "1986-11-30")."""
    if claimed.startswith("--"):
        return found.endswith(claimed[1:]) or found == claimed
    return found.startswith(claimed)


def supports(claim: Facts, evidence: Evidence) -> bool:
    """Whether ``evidence`` holds every number, date, name and quote of ``claim``, and at
    least :data:`RARE_SUPPORT` of its rare words. A claim with nothing checkable is
    supported by anything (there is nothing it could be wrong about)."""
    if not claim.numbers <= evidence.numbers:
        return False
    if any(not any(_same_date(date, found) for found in evidence.dates) for date in claim.dates):
        return False
    if any(not _name_in(name, evidence.words) for name in claim.names):
        return False
    if any(f" {quote} " not in evidence.squeezed for quote in claim.quotes):
        return False
    if claim.rare_words:
        held = sum(1 for word in claim.rare_words if _name_in(word, evidence.words))
        if held / len(claim.rare_words) < RARE_SUPPORT:
            return False
    return True
