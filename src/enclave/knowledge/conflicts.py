"""Disagreement between retrieved passages, found without asking the model.

A 135M-parameter model cannot be trusted to notice that two documents give
different dates for the same event, so this is done in code, cheaply:

1. For each passage, take the sentence that is most about the question
   (shares the most of its content words); passages with no such sentence
   say nothing on the point asked. The sentence must also name the
   question's *subject*: its content words other than units and question
   words. "How many days of parental leave?" has the subject {parental,
   leave}, so "25 days of annual leave" is a different quantity, not a
   competing answer.
2. From those sentences extract the key values of the kind the question
   asks for: dates for "when", places for "where", amounts for "how
   many/much/long", or all three kinds when the question does not say.
3. If sentences from different documents give values of the same kind that
   cannot both be true (1998 vs 2001; Uppsala vs Lund; 25 days vs 30
   days), the passages that agree with the best-ranked one are
   ``supporting`` and the others ``contradicting``.

It errs on the side of silence: no value, no single kind, or one document
only means no disagreement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclave.knowledge.service import Passage
from enclave.knowledge.text import best_sentence, content_words, support

# How much of the question a sentence must cover to count as being about it.
TOPIC_SUPPORT = 0.5

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
    re.compile(rf"\b{_MONTH}\s+{_YEAR}\b", re.I),
)
YEAR = re.compile(rf"\b{_YEAR}\b")
UNITS = (
    r"%|percent|per cent|days?|working days|weeks?|months?|years?|hours?|minutes?|"
    r"euros?|eur|€|kronor|sek|usd|dollars?|\$|pounds?|gbp|£|km|kilomet(?:re|er)s?|metres?|"
    r"meters?|kg|tonnes?|people|persons?|employees|staff|members|seats|beds|times"
)
AMOUNT = re.compile(rf"(?:(€|\$|£)\s?)?\b(\d+(?:[.,]\d+)*)\s*({UNITS})?(?![\w-])", re.I)
PLACE = re.compile(
    r"\b(?:in|at|near|from|to)\s+((?:the\s+)?[A-ZÅÄÖÉ][\w'\u2019-]+(?:\s+(?:[A-ZÅÄÖÉ][\w'\u2019-]+|of|upon|am|an|de)){0,3})"
)
NOT_PLACES = {month.capitalize() for month in MONTHS} | {
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "The",
    "This",
    "That",
    "Article",
    "Section",
}
KIND_HINTS = (
    ("date", re.compile(r"\b(when|what (?:year|date|day|month)|which (?:year|date|day))\b", re.I)),
    (
        "place",
        re.compile(
            r"\b(where|which (?:city|town|place|country|venue)|what (?:city|place))\b", re.I
        ),
    ),
    (
        "amount",
        re.compile(
            r"\b(how (?:many|much|long|old|often)|what (?:percentage|share|number|amount))\b", re.I
        ),
    ),
)
KINDS = ("date", "place", "amount")
# Words that say what kind of value is asked, not what it is about.
ASKING_WORDS = frozenset(
    {
        "many",
        "much",
        "long",
        "old",
        "often",
        "year",
        "date",
        "day",
        "month",
        "city",
        "town",
        "place",
        "country",
        "venue",
        "percentage",
        "share",
        "number",
        "amount",
        "held",
    }
)
# The share of the question's subject words a sentence must name (all, for up to 4 words).
SUBJECT_SUPPORT = 0.75


@dataclass(frozen=True, slots=True)
class Claim:
    """What one passage says on the point asked: its sentence and the values in it."""

    number: int  # the passage's number (from 1) in the answer's sources
    passage: Passage
    sentence: str  # an exact substring of the passage's chunk
    start: int  # offsets of the sentence in the document's Markdown
    end: int
    values: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.passage.quoted(self.number, self.sentence, self.start, self.end),
            "values": list(self.values),
        }


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Passages that contradict each other on the point asked."""

    kind: str  # "date", "place" or "amount"
    supporting: tuple[Claim, ...]  # agree with the best-ranked passage
    contradicting: tuple[Claim, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "supporting": [claim.as_dict() for claim in self.supporting],
            "contradicting": [claim.as_dict() for claim in self.contradicting],
        }


def extract_values(sentence: str, kind: str, question: str = "") -> set[str]:
    """The normalised values of ``kind`` in a sentence ("1998-03-12", "1998", "lund", "25 day")."""
    if kind == "date":
        return _dates(sentence)
    if kind == "place":
        asked = {word.lower() for word in re.findall(r"\w+", question)}
        places = set()
        for match in PLACE.finditer(sentence):
            words = [w for w in match.group(1).split() if w.lower() != "the"]
            while words and words[-1] in NOT_PLACES:
                words.pop()
            if not words or words[0] in NOT_PLACES or YEAR.fullmatch(words[0]):
                continue
            if all(word.lower() in asked for word in words):
                continue  # the question's own subject, not an answer
            places.add(" ".join(words).lower())
        return places
    amounts = set()
    dated = {value[:4] for value in _dates(sentence)}
    for match in AMOUNT.finditer(sentence):
        prefix, number, unit = match.group(1), match.group(2), (match.group(3) or "")
        if number in dated or (not unit and not prefix and YEAR.fullmatch(number)):
            continue
        unit = (prefix or unit).lower().rstrip("s") if (prefix or unit) else ""
        amounts.add(f"{number.replace(',', '')} {unit}".strip())
    return amounts


def _dates(sentence: str) -> set[str]:
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for index, pattern in enumerate(DATE_PATTERNS):
        for match in pattern.finditer(sentence):
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
    for match in YEAR.finditer(sentence):
        if not any(start <= match.start() < end for start, end in spans):
            found.add(match.group())
    return found


def compatible(kind: str, ours: set[str], theirs: set[str]) -> bool:
    """Whether two value sets can both be true: they share a value (a date also matches
    a coarser date of the same year or month)."""
    if ours & theirs:
        return True
    if kind == "date":
        return any(a.startswith(b) or b.startswith(a) for a in ours for b in theirs)
    return False


def question_subject(question: str) -> set[str]:
    """What the question is about: its content words less units and asking words."""
    units = content_words(UNITS.replace("|", " ").replace("(?:", " ").replace(")?", " "))
    return content_words(question) - units - ASKING_WORDS


def _topic_sentence(
    passage: Passage, question_words: set[str], subject: set[str]
) -> tuple[int, int] | None:
    span, score = best_sentence(passage.chunk.text, question_words)
    if span is None or score < TOPIC_SUPPORT:
        return None
    named = content_words(passage.chunk.text[span[0] : span[1]])
    needed = 1.0 if len(subject) <= 4 else SUBJECT_SUPPORT
    return span if support(subject, named) >= needed else None


def find_disagreement(question: str, passages: Sequence[Passage]) -> Disagreement | None:
    """Passages from different documents that give incompatible values for what is asked."""
    question_words = content_words(question)
    if not question_words or len(passages) < 2:
        return None
    kinds = [kind for kind, hint in KIND_HINTS if hint.search(question)] or list(KINDS)
    subject = question_subject(question)
    topical = []
    for number, passage in enumerate(passages, start=1):
        span = _topic_sentence(passage, question_words, subject)
        if span is not None:
            topical.append((number, passage, span))
    for kind in kinds:
        claims = []
        for number, passage, (start, end) in topical:
            sentence = passage.chunk.text[start:end]
            values = extract_values(sentence, kind, question)
            if values:
                offset = passage.chunk.char_start
                claims.append(
                    Claim(
                        number,
                        passage,
                        sentence,
                        offset + start,
                        offset + end,
                        tuple(sorted(values)),
                    )
                )
        if len({claim.passage.document_id for claim in claims}) < 2:
            continue
        lead = set(claims[0].values)
        supporting = [c for c in claims if compatible(kind, lead, set(c.values))]
        contradicting = [c for c in claims if not compatible(kind, lead, set(c.values))]
        documents = {c.passage.document_id for c in supporting}
        if any(c.passage.document_id not in documents for c in contradicting):
            return Disagreement(kind, tuple(supporting), tuple(contradicting))
    return None
