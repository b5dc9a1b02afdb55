"""What a question asks for: the expected answer type and the focus terms.

"How many GPUs does the cluster have?" expects a **number** and is about
the **focus** {gpu, cluster}. A sentence can only answer it when it names
the focus and carries a value of the expected type (:func:`carries_value`);
when no retrieved sentence does, the question is a near miss and the answer
is an abstention that says what the sources do cover.

Types: ``number`` (counts, amounts, shares), ``date``, ``person``,
``organisation``, ``place``, ``yesno`` and ``open`` (anything else: the
type cannot be checked, only the focus).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from wordfreq import zipf_frequency

from enclave.knowledge.facts import (
    NOT_NAMES,
    counts,
    dates,
    name_key,
    name_runs,
    names,
    numbers,
    without_speaker,
)
from enclave.knowledge.text import content_words

AnswerType = Literal["number", "date", "person", "organisation", "place", "yesno", "open"]

_ORGANISATION_NOUNS = (
    r"company|companies|organi[sz]ation|agency|firm|bank|committee|court|party|provider|vendor|"
    r"department|ministry|university|institution|board|corporation|business|group|body|"
    r"newspaper|publisher|union|government|team|supplier|employer|lab|laboratory"
)
_PLACE_NOUNS = (
    r"city|town|place|country|state|region|county|village|venue|location|island|river|room|"
    r"building|ocean|sea|street|address|site|capital"
)
_PERSON_NOUNS = (
    r"person|man|woman|chairman|chair|president|senator|justice|judge|governor|member|"
    r"author|speaker|witness|director|officer|minister|secretary|leader|founder|head|attorney|"
    r"lawyer|counsel|official|manager|editor|captain|general|king|queen"
)
_NUMBER_NOUNS = (
    r"percentage|share|number|amount|rate|price|cost|size|total|level|figure|sum|value|"
    r"budget|salary|fee|population|count|score|ratio|speed|distance|weight|height|age"
)
_WHICH = r"(?:what|which|in what|in which|on what|on which|at what|for what|for which) "
_NAME_OF = r"\bname of (?:the |an? |(?:[\w-]+ )?[\w-]+'s )?"
_BETWEEN = r"(?:[\w'-]+ ){0,2}"  # "which *assistant* secretary", "what *federal funds* rate"
TYPE_RULES: tuple[tuple[AnswerType, re.Pattern[str]], ...] = (
    (
        "organisation",
        re.compile(
            rf"{_NAME_OF}{_BETWEEN}(?:{_ORGANISATION_NOUNS})\b",
            re.I,
        ),
    ),
    (
        "person",
        re.compile(
            rf"{_NAME_OF}{_BETWEEN}(?:{_PERSON_NOUNS}|friend)s?\b",
            re.I,
        ),
    ),
    (
        "place",
        re.compile(rf"{_NAME_OF}{_BETWEEN}(?:{_PLACE_NOUNS})\b", re.I),
    ),
    ("number", re.compile(r"\bhow (?:many|much|long|old|often|far|big|large|high|fast)\b", re.I)),
    (
        "date",
        re.compile(
            rf"\b(?:when|{_WHICH}(?:years?|dates?|days?|months?|decades?|century|time|hour))\b",
            re.I,
        ),
    ),
    ("place", re.compile(rf"\b(?:where|{_WHICH}{_BETWEEN}(?:{_PLACE_NOUNS})s?)\b", re.I)),
    ("organisation", re.compile(rf"\b{_WHICH}{_BETWEEN}(?:{_ORGANISATION_NOUNS})\b", re.I)),
    (
        "person",
        re.compile(rf"\b(?:who|whom|whose|{_WHICH}{_BETWEEN}(?:{_PERSON_NOUNS})s?)\b", re.I),
    ),
    (
        "number",
        re.compile(
            rf"\b{_WHICH}(?:was |is |were |are )?(?:the )?{_BETWEEN}(?:{_NUMBER_NOUNS})\b", re.I
        ),
    ),
)
YESNO = re.compile(
    r"^\s*(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have|had|may|must|"
    r"shall|isn't|aren't|wasn't|didn't|doesn't)\b",
    re.I,
)
# Words that say what kind of value is asked, not what it is about.
ASKING_WORDS = frozenset(
    content_words(
        "many much long old often far big large high fast year date day month decade century "
        "city town place country venue location percentage number amount figure value total "
        "person name who whom whose happen happened exactly tell give mention "
        + _ORGANISATION_NOUNS.replace("|", " ").replace("organi[sz]ation", "organisation")
    )
) - {"rate", "price", "cost", "salary", "budget", "population", "bank", "committee", "court"}


_SUFFIXES = ("ations", "ation", "ences", "ence", "ances", "ance", "ents", "ent", "ings", "ing",
             "ies", "ied", "ed", "es", "ly", "s", "e", "y")  # fmt: skip


def stem(word: str) -> str:
    """A rough stem, so "hosts", "hosted" and "hosting" meet, and "independent" meets
    "independence"."""
    for ending in _SUFFIXES:
        if word.endswith(ending) and len(word) - len(ending) >= 4:
            return word[: -len(ending)]
    return word


_ASKING_STEMS = frozenset(stem(word) for word in ASKING_WORDS)


@dataclass(frozen=True, slots=True)
class QuestionIntent:
    """What a question expects (``answer_type``) and what it is about (``focus``)."""

    text: str
    answer_type: AnswerType
    focus: frozenset[str]
    # Names the question itself uses ("Greenspan"), so they are never taken as the answer.
    names: frozenset[str]
    # What is counted or measured ("how many *pages*", "what was the *budget*"), or the
    # role asked for ("which *law firm*"): an answer must name it (with the sentences
    # around it), or its value is about something else.
    measured: frozenset[str] = frozenset()
    # Numbers that name the subject ("Apollo 13", "in 1986"), outside of dates.
    identifiers: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, object]:
        return {
            "answer_type": self.answer_type,
            "focus": sorted(self.focus),
            "measured": sorted(self.measured),
        }


def answer_type(question: str) -> AnswerType:
    """The expected type of the answer, from the question's wording: the rule that
    matches first in the question ("Which secretary was there when..." asks who)."""
    found = [
        (match.start(), order, kind)
        for order, (kind, rule) in enumerate(TYPE_RULES)
        if (match := rule.search(question)) is not None
    ]
    if found:
        return min(found)[2]
    if YESNO.search(question):
        return "yesno"
    return "open"


def intent(question: str) -> QuestionIntent:
    """The question's expected answer type and focus terms."""
    kind = answer_type(question)
    focus = {
        word
        for word in content_words(question)
        if word not in ASKING_WORDS and stem(word) not in _ASKING_STEMS
    }
    first = re.match(r"\s*([A-Z][\w'\u2019-]*)", question)
    opening = {name_key(first.group(1))} - NOT_NAMES if first else set()
    asked_names = names(question) | opening
    measured = measured_terms(question) if kind == "number" else role_terms(question, kind)
    identifiers = {value for value in counts(question) if value in re.findall(r"\d+", question)}
    return QuestionIntent(
        question,
        kind,
        frozenset(focus),
        frozenset(asked_names),
        frozenset(measured),
        frozenset(identifiers),
    )


_COUNTED = re.compile(r"\bhow (?:many|much)\s+([a-z][\w-]*)", re.I)
_AUXILIARY_WORDS = "did do does was were is are has have had will would can could should"
_MEASURES = frozenset(
    content_words(
        "budget cost costs price salary fee fees rate interest population speed distance "
        "weight height temperature pages tax revenue profit loss debt wage"
    )
)
_AUXILIARIES = frozenset(_AUXILIARY_WORDS.split())


_GENERIC_NOUNS = frozenset(
    content_words(
        "person people man woman company companies organisation organization business group "
        "body place country city town location state region name capital"
    )
)
_ROLE_NOUNS = (
    frozenset(
        content_words(
            " ".join(
                (_PERSON_NOUNS, _ORGANISATION_NOUNS, _PLACE_NOUNS, "friend|partner|spouse|wife")
            ).replace("|", " ")
        )
    )
    - _GENERIC_NOUNS
)


_ROLE_PHRASE = re.compile(  # a lookahead, so "what was the name of the friend" finds both
    r"(?=\b(?:which|what|whose|who (?:is|was|were|are)(?: the)?|name of(?: the|\s+\S+'s)?)"
    r"((?:\s+[\w-]+){1,3}))",
    re.I,
)


def role_terms(question: str, kind: AnswerType) -> set[str]:
    """The role, body or kind of place a who/which/where question asks for ("which *law
    firm*", "the *flight director*", "the name of the *friend*"): an answer names it."""
    if kind not in ("person", "organisation", "place"):
        return set()
    found: set[str] = set()
    for match in _ROLE_PHRASE.finditer(question):
        found |= content_words(match.group(1)) & _ROLE_NOUNS
    return found


_COMPOUND_NUMBER = re.compile(r"\b(?!the\b|a\b|what\b|which\b|total\b)([a-z]+) number\b", re.I)
# "What was the name of the ship?", "What is it called?": the answer is a name.
NAMING = re.compile(r"\b(?:name of|named|called|title of|titled)\b", re.I)


ASKS_YEAR = re.compile(r"\b(?:what|which) year\b", re.I)


def measured_terms(question: str) -> set[str]:
    """The thing a number question counts or measures (see ``QuestionIntent.measured``)."""
    found = set()
    counted = _COUNTED.search(question)
    if counted:  # the counted noun: "how many lunar *orbits* did", "how many *pages* long"
        words = []
        for word in re.findall(r"[\w'-]+", question[counted.start(1) :])[:4]:
            if word.lower() in _AUXILIARIES:
                break
            words.append(word)
        heads = [w for w in words if content_words(w) and not content_words(w) <= ASKING_WORDS]
        plural = [w for w in heads if w.lower().endswith("s") and not w.lower().endswith("ss")]
        if heads:  # the first plural is the counted noun; else the first word ("sheep")
            found |= content_words((plural or heads)[0])
    found |= content_words(question) & _MEASURES
    for compound in _COMPOUND_NUMBER.finditer(question):  # "account number": an identifier
        found |= content_words(compound.group(1))
    return found - ASKING_WORDS


def names_measure(question: QuestionIntent, text: str) -> bool:
    """Whether ``text`` names what the question counts or measures, or the role it asks
    for, and the numbers that identify its subject ("Apollo *13*")."""
    if question.identifiers and not question.identifiers <= numbers(text) | dates(text):
        return False
    if not question.measured:
        return True
    words = {stem(word) for word in content_words(text)}
    return any(stem(term) in words for term in question.measured)


def focus_coverage(question: QuestionIntent, text: str) -> float:
    """The share of the question's focus that ``text`` names, each term weighted by its
    rarity ("parental" counts more than "get"); 1.0 with no focus."""
    if not question.focus:
        return 1.0
    words = {stem(word) for word in content_words(text)}
    total = held = 0.0
    for term in question.focus:
        weight = term_weight(term)
        total += weight
        if stem(term) in words:
            held += weight
    return held / total


@lru_cache(maxsize=65536)
def term_weight(term: str) -> float:
    """How much a focus term says: rarer words more (7 - Zipf frequency, at least 0.5)."""
    return max(0.5, 7.0 - zipf_frequency(term, "en"))


ORGANISATION = re.compile(
    r"\b(?:[A-Z][\w&'-]*\s+){0,4}(?:Inc|Corp|Corporation|Company|Co|Ltd|LLC|GmbH|AB|AG|SA|Bank|"
    r"Reserve|Committee|Board|Agency|Department|Ministry|University|Institute|Association|"
    r"Council|Commission|Court|Party|Union|Office|Service|Group|Foundation|Fund|Times|Post|"
    r"Journal)\b\.?|\b[A-Z]{2,6}\b"
)
PLACE = re.compile(
    r"\b(?:in|at|near|from|to|into|across|outside|inside)\s+(?:the\s+)?([A-Z][\w'\u2019-]+)"
    r"|\b([A-Z][\w-]+)(?:'s|\u2019s)\s+(?:office|room|house|home|residence|building|farm)\b"
)


# "The capital is Auckland", "Capital: Wellington": a place named without a preposition.
NAMED_AS = re.compile(r"(?:\b(?:is|was|are|were)\s+(?:the\s+)?|:\s*)([A-Z][\w'\u2019-]+)")


PERIODS = {
    "day": re.compile(r"\b(?:daily|per day|a day|each day|every day|per diem)\b", re.I),
    "week": re.compile(r"\b(?:weekly|per week|a week|each week|every week)\b", re.I),
    "month": re.compile(r"\b(?:monthly|per month|a month|each month|every month)\b", re.I),
    "quarter": re.compile(r"\b(?:quarterly|per quarter|a quarter|each quarter)\b", re.I),
    "year": re.compile(
        r"\b(?:yearly|annual|annually|per year|a year|each year|every year|per annum)\b", re.I
    ),
}


def period_of(text: str) -> str | None:
    """The one period a figure in ``text`` is per ("day" for "2,000 a day"), if any."""
    found = [period for period, pattern in PERIODS.items() if pattern.search(text)]
    return found[0] if len(found) == 1 else None


def place_names(text: str, asked: frozenset[str] = frozenset()) -> set[str]:
    """Names in ``text`` placed as a place: after "in", "at", "from"...; "the capital is
    X"; "Poindexter's office". Not the question's own names."""
    capitalised = names(text)
    found = set()
    for pattern in (PLACE, NAMED_AS):
        for match in pattern.finditer(text):
            key = name_key(next(group for group in match.groups() if group))
            if key in capitalised and key not in asked:
                found.add(key)
    return found


def person_names(text: str, asked: frozenset[str] = frozenset()) -> set[str]:
    """Names in ``text`` that could be a person: capitalised, not sentence grammar, not
    in the question, not an organisation acronym."""
    return {name for name in names(text) if name not in asked and not name.isupper()}


def carries_value(question: QuestionIntent, text: str) -> bool:
    """Whether ``text`` holds a value of the question's expected type that the question
    does not already hold. Yes/no and open questions have no checkable type."""
    kind = question.answer_type
    text = without_speaker(text)
    if kind == "number":
        return bool(counts(text) - numbers(question.text))
    if kind == "date":
        found = dates(text) - dates(question.text)
        if ASKS_YEAR.search(question.text):  # "in what year": a day and month will not do
            return any(value[:4].isdigit() for value in found)
        return bool(found)
    if kind == "person":
        return bool(person_names(text, question.names))
    if kind == "organisation":
        asked = question.names | {name_key(w) for w in question.text.split()}
        found = {name_key(m.group()) for m in ORGANISATION.finditer(text)} | names(text)
        return bool(found - asked)
    if kind == "place":
        return bool(place_names(text, question.names))
    if kind == "open" and NAMING.search(question.text):
        return bool(name_runs(text, question.names))
    return True
