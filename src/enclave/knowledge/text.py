"""Small text tools shared by citation checking and disagreement detection."""

from __future__ import annotations

import re
from collections.abc import Iterator

WORD = re.compile(r"\w+", re.UNICODE)
# A sentence ends at . ! ? (or a line break) followed by space and not inside a number.
_ABBREVIATIONS = tuple(
    [
        "Mr",
        "Mrs",
        "Ms",
        "Dr",
        "St",
        "Col",
        "Gen",
        "Lt",
        "Sen",
        "Rep",
        "Jr",
        "Sr",
        "No",
        "Adm",
        "Capt",
        "Gov",
        "Prof",
        "vs",
        "Mt",
        "Co",
        "U.S",
        "Inc",
        "Cmdr",
    ]
)
_NOT_AN_END = "".join(rf"(?<!\b{re.escape(word)}\.)" for word in _ABBREVIATIONS)
_SENTENCE_END = re.compile(
    rf"(?<=[.!?]){_NOT_AN_END}(?<!\b[A-Z]\.)"  # not after "Mr." or an initial ("J.")
    r"[\"'\u201d\u2019)\]]*\s+"  # . ! ? then closing quotes or brackets
    r"|\n\s*\n"  # a blank line
    r"|\n(?=\s*(?:[-*+]|\d+\.|#)\s)"  # a list item or heading on the next line
)

_STOPWORD_LIST = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    also may shall must might us per via within without upon"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())


_LEADING_MARKERS = re.compile(r"(?:\[\d{1,3}(?:\s*,\s*\d{1,3})*\]\s*)+")


def sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each sentence in ``text``, trimmed of surrounding whitespace.

    Citation markers after a sentence's full stop belong to that sentence:
    "Leave is 480 days. [1] Pay is 80%." is two sentences, the first with its [1].
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        spans.extend(_trimmed(text, start, match.start()))
        start = match.end()
    spans.extend(_trimmed(text, start, len(text)))
    merged: list[tuple[int, int]] = []
    for begin, end in spans:
        markers = _LEADING_MARKERS.match(text, begin, end)
        if markers and merged:
            previous_start, _ = merged[-1]
            marker_end = begin + len(text[begin : markers.end()].rstrip())
            merged[-1] = (previous_start, marker_end)
            begin = markers.end()
            if begin >= end:
                continue
        merged.append((begin, end))
    yield from merged


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Lower-cased, lightly stemmed words that carry meaning (no stopwords, no 1-2 letter words)."""
    return {
        _stem(word)
        for word in (match.group().lower() for match in WORD.finditer(text))
        if len(word) > 2 and word not in STOPWORDS
    }


def support(claim: set[str], source: set[str]) -> float:
    """The share of a claim's content words that the source also has."""
    return len(claim & source) / len(claim) if claim else 0.0


def without_heading(text: str, start: int, end: int) -> int:
    """Where the sentence ``text[start:end]`` starts once leading heading lines are cut
    off; ``end`` when it is only headings."""
    while start < end and text[start] == "#":
        newline = text.find("\n", start, end)
        if newline < 0:
            return end
        start = newline + 1
        while start < end and text[start].isspace():
            start += 1
    return start


def best_sentence(text: str, words: set[str]) -> tuple[tuple[int, int] | None, float]:
    """The (start, end) of the sentence of ``text`` that best supports ``words``, and its score.

    The score is :func:`support` of ``words`` by the sentence, heading included
    ("# Parental leave" tells what the sentence under it is about). The span
    never starts with a heading, and a sentence that is only a heading is not
    chosen unless the text is nothing but headings. The first sentence wins
    ties, so with no ``words`` it is the first sentence (score 0). The span is
    ``None`` only when ``text`` has no sentence at all.
    """
    best, best_score = None, -1.0
    fallback = None
    for start, end in sentence_spans(text):
        fallback = fallback or (start, end)
        content = without_heading(text, start, end)
        if content >= end:
            continue
        score = support(words, content_words(text[start:end])) if words else 0.0
        if score > best_score:
            best, best_score = (content, end), score
    if best is None:
        return fallback, 0.0
    return best, max(best_score, 0.0)
