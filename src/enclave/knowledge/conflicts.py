"""Disagreement between retrieved documents, found in code for any answer type.

A small model cannot be trusted to notice that two documents name different
people for the same post, so this is done without it:

1. Each passage's **claim** is its best-scoring sentence that answers the
   question (:meth:`Candidate.answers`: it names the question's focus and
   carries a value of the expected type), held to a stricter focus here
   (:data:`CLAIM_FOCUS`): a sentence about something else is no rival.
2. From each claim take the **candidate answers** of the expected type
   (:func:`candidate_values`): people, organisations, places, titles,
   numbers, dates, or yes/no from the sentence's polarity.
3. **Cluster** equivalent values: "Annie Ernaux" and "Ernaux" share a name;
   "March 1998" and "1998-03-12" are the same month; "26 percent" and
   "26%" are one number.
4. When claims from different documents have no value in common with the
   best-ranked claim, the documents disagree: ``supporting`` are the claims
   that agree with the best-ranked one, ``contradicting`` the others, each
   quoted.

It errs on the side of silence: a single document, claims without values,
or values that can both be true mean no disagreement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclave.knowledge.extractive import Candidate
from enclave.knowledge.facts import (
    dates,
    name_key,
    name_runs,
    numbers,
    quotes,
    without_speaker,
)
from enclave.knowledge.questions import (
    ORGANISATION,
    QuestionIntent,
    period_of,
    place_names,
    stem,
    term_weight,
)
from enclave.knowledge.service import Passage
from enclave.knowledge.text import content_words

# The (rarity-weighted) share of the focus a claim must name.
CLAIM_FOCUS = 0.5
# ... and be at least this similar to the question (a bare "Chairman HAMILTON." is not).
CLAIM_SIMILARITY = 0.3
NEGATION = re.compile(
    r"\b(?:not|no|never|none|neither|nor|cannot|without|refused|rejected|denied)\b|n't\b", re.I
)
_TITLE = re.compile(
    r"\b[A-Z][\w'\u2019-]*(?:\s+(?:of|the|and|for|in|on|a|[A-Z][\w'\u2019-]*|\d+)){1,6}"
)


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
    """Documents that contradict each other on the point asked."""

    kind: str  # the question's answer type: "person", "date", "number", ...
    supporting: tuple[Claim, ...]  # agree with the best-ranked passage
    contradicting: tuple[Claim, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "supporting": [claim.as_dict() for claim in self.supporting],
            "contradicting": [claim.as_dict() for claim in self.contradicting],
        }


def polarity(sentence: str) -> str:
    """ "no" when the sentence negates, else "yes"."""
    return "no" if NEGATION.search(sentence) else "yes"


def candidate_values(question: QuestionIntent, sentence: str) -> set[str]:
    """The answers of the question's type that ``sentence`` gives, normalised."""
    kind = question.answer_type
    sentence = without_speaker(sentence)
    if kind == "number":
        asked = numbers(question.text)
        years = {value for value in dates(sentence) if len(value) == 4}
        return numbers(sentence) - asked - years
    if kind == "date":
        return dates(sentence) - dates(question.text)
    if kind == "person":
        return {run for run in name_runs(sentence, question.names) if not run.isupper()}
    if kind == "organisation":
        known = question.names | {name_key(word) for word in question.text.split()}
        found = set()
        for match in ORGANISATION.finditer(sentence):
            words = {name_key(word) for word in match.group().split()} - known
            if words:
                found.add(" ".join(sorted(words)))
        return found or name_runs(sentence, frozenset(known))
    if kind == "place":
        return place_names(sentence, question.names)
    if kind == "yesno":
        return {polarity(sentence)}
    titled = quotes(sentence) or {
        name_key(m.group()) for m in _TITLE.finditer(sentence) if m.start() > 0
    }
    asked_text = question.text.lower()
    return {title for title in titled if title not in asked_text}


def same_value(kind: str, ours: str, theirs: str) -> bool:
    """Whether two candidate answers can be the same thing: equal, a date and a more
    precise one, or one name inside the other ("Ernaux" in "Annie Ernaux"; but
    "European Union" is not "European Economic Area")."""
    if ours == theirs:
        return True
    if kind == "date":
        return ours.startswith(theirs) or theirs.startswith(ours)
    if kind in ("person", "organisation", "open", "place"):
        a, b = set(ours.split()), set(theirs.split())
        return a <= b or b <= a
    return False


def compatible(kind: str, ours: set[str], theirs: set[str]) -> bool:
    """Whether two claims' values can both be true: some pair is the same value."""
    return any(same_value(kind, a, b) for a in ours for b in theirs)


def _names_subject(question: QuestionIntent, candidate: Candidate) -> bool:
    """Whether the candidate (with its context) names the question's most specific focus
    term: "25 days of annual leave" does not answer "how much parental leave"."""
    subject = max(question.focus, key=term_weight)
    return stem(subject) in {stem(word) for word in content_words(candidate.context)}


def _claims(question: QuestionIntent, ranked: Sequence[Candidate]) -> list[Claim]:
    """The best answering sentence of each document, with its values (in the retriever's
    order). One claim per document: a document does not disagree with itself (a witness
    correcting a figure, a table and its note), it is one source."""
    claims: dict[int, Claim] = {}
    for candidate in ranked:
        document = candidate.passage.document_id
        if document in claims or not candidate.answers(question):
            continue
        if question.focus and (
            candidate.focus < CLAIM_FOCUS or not _names_subject(question, candidate)
        ):
            continue
        if candidate.similarity < CLAIM_SIMILARITY:
            continue
        values = candidate_values(question, candidate.text)
        if not values:
            continue
        start, end = candidate.document_span
        claims[document] = Claim(
            candidate.number,
            candidate.passage,
            candidate.text,
            start,
            end,
            tuple(sorted(values)),
        )
    return sorted(claims.values(), key=lambda claim: claim.number)


def find_disagreement(question: QuestionIntent, ranked: Sequence[Candidate]) -> Disagreement | None:
    """Claims from different documents whose answers cannot both be true."""
    claims = _claims(question, ranked)
    if len({claim.passage.document_id for claim in claims}) < 2:
        return None
    kind = question.answer_type
    if kind == "number":  # "2,000 a day" and "700,000 a year" are two figures, not rivals
        asked = period_of(question.text)
        claims = [c for c in claims if period_of(c.sentence) in (None, asked)] if asked else claims
        if len({period_of(c.sentence) for c in claims}) > 1:
            return None
        if len({claim.passage.document_id for claim in claims}) < 2:
            return None
    lead = set(claims[0].values)
    supporting = [c for c in claims if compatible(kind, lead, set(c.values))]
    contradicting = [c for c in claims if not compatible(kind, lead, set(c.values))]
    documents = {c.passage.document_id for c in supporting}
    if not any(c.passage.document_id not in documents for c in contradicting):
        return None
    return Disagreement(kind, tuple(supporting), tuple(contradicting))
