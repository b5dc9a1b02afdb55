"""Sentence-level answers: the one to three retrieved sentences that best answer a question.

Every sentence of every retrieved passage is a :class:`Candidate`, scored on
three things a small model cannot get wrong:

- **similarity**: cosine similarity of the sentence's embedding to the
  question's (the knowledge base's own embedding model);
- **focus**: the share of the question's focus terms the sentence names
  (with the sentence before it, so a speaker's turn keeps its subject);
- **type**: whether the sentence carries a value of the expected answer type
  (a number for "how many", a date for "when", a name for "who").

A question is **answerable** when some candidate has the focus and a value
of the right type (:func:`answerable`); otherwise it is a near miss. The
extractive answer quotes the best candidates verbatim, each with its
citation (:func:`choose`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from enclave.knowledge.questions import (
    QuestionIntent,
    carries_value,
    focus_coverage,
    names_measure,
    period_of,
)
from enclave.knowledge.service import Passage
from enclave.knowledge.text import content_words, sentence_spans, without_heading

Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]

# Weights of the score; similarity is in [-1, 1], the others in [0, 1].
SIMILARITY_WEIGHT = 0.5
FOCUS_WEIGHT = 0.3
TYPE_WEIGHT = 0.2
RANK_WEIGHT = 0.05  # a little trust in the retriever's order
# A sentence "has the focus" at this (rarity-weighted) coverage, with the sentences around
# it (all of a one- or two-term focus).
FOCUS_NEEDED = 0.4
# ... or when it is this similar to the question (a paraphrase shares no words).
SIMILARITY_INSTEAD_OF_FOCUS = 0.62
# A sentence less similar to the question than this answers nothing, whatever it names.
MIN_SIMILARITY = 0.15
# Further sentences join the answer when they score this share of the best one.
JOIN_SHARE = 0.8
MAX_SENTENCES = 3
MIN_WORDS = 3
MAX_CANDIDATES = 200
CONTEXT_BEFORE, CONTEXT_AFTER = 2, 1
LONG_SENTENCE = 300  # characters; longer ones that span lines are split at them
# The context's focus counts at this share of the sentence's own.
CONTEXT_SHARE = 0.85
# A sentence that is itself a question (an interviewer's) rarely answers one.
QUESTION_PENALTY = 0.15


@dataclass(frozen=True, slots=True)
class Candidate:
    """One sentence of a retrieved passage, scored as an answer to the question."""

    number: int  # the passage's number (from 1) among the answer's sources
    passage: Passage
    start: int  # offsets of the sentence in the passage's chunk text
    end: int
    focus: float
    typed: bool
    similarity: float
    score: float
    context: str = ""  # the sentences around it and the chunk's headings

    @property
    def text(self) -> str:
        return self.passage.chunk.text[self.start : self.end]

    @property
    def document_span(self) -> tuple[int, int]:
        offset = self.passage.chunk.char_start
        return offset + self.start, offset + self.end

    def has_focus(self, question: QuestionIntent) -> bool:
        needed = 1.0 if len(question.focus) <= 2 else FOCUS_NEEDED
        return self.focus >= needed or self.similarity >= SIMILARITY_INSTEAD_OF_FOCUS

    @property
    def is_question(self) -> bool:
        return self.text.rstrip().endswith("?")

    def answers(self, question: QuestionIntent) -> bool:
        """Whether this sentence names the focus and holds a value of the expected type.
        A question (an interviewer's, in a transcript) answers nothing."""
        return (
            self.typed
            and self.similarity >= MIN_SIMILARITY
            and not self.is_question
            and self.has_focus(question)
            and names_measure(question, self.context)
        )


def _sentences(passage: Passage) -> list[tuple[int, int, str]]:
    """(start, end, context) per sentence: the context is the sentences around it (two
    before, one after) and the chunk's headings, for the focus: in a transcript the
    answer follows the question that names the subject."""
    text = passage.chunk.text
    headings = " ".join(passage.chunk.heading_path or ())
    spans = [piece for span in sentence_spans(text) for piece in _lines(text, *span)]
    found: list[tuple[int, int, str]] = []
    for index, (start, end) in enumerate(spans):
        content = without_heading(text, start, end)
        sentence = text[content:end]
        if content >= end or len(content_words(sentence)) + sentence.count(" ") < MIN_WORDS:
            continue
        around = spans[max(0, index - CONTEXT_BEFORE) : index + 1 + CONTEXT_AFTER]
        context = " ".join(text[a:b] for a, b in around)
        found.append((content, end, f"{headings} {context}"))
    return found


def _lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """A long "sentence" that spans lines (a table, a list of fields) as its lines."""
    if end - start <= LONG_SENTENCE or "\n" not in text[start:end]:
        return [(start, end)]
    pieces = []
    for line in text[start:end].split("\n"):
        if line.strip():
            offset = text.index(line, start)
            pieces.append((offset, offset + len(line)))
            start = offset + len(line)
    return pieces


async def rank(
    question: QuestionIntent, passages: Sequence[Passage], embed: Embed
) -> list[Candidate]:
    """Every sentence of ``passages`` as a scored candidate, best first."""
    spans: list[tuple[int, Passage, int, int, str]] = []
    seen: set[str] = set()  # overlapping chunks repeat sentences: the first passage keeps it
    for number, passage in enumerate(passages, start=1):
        for start, end, context in _sentences(passage):
            key = " ".join(passage.chunk.text[start:end].split())
            if key not in seen:
                seen.add(key)
                spans.append((number, passage, start, end, context))
    spans = spans[:MAX_CANDIDATES]
    if not spans:
        return []
    texts = [passage.chunk.text[start:end] for _, passage, start, end, _ in spans]
    vectors = await embed([question.text, *texts])
    similarities = vectors[1:] @ vectors[0]
    ranked = []
    for (number, passage, start, end, context), similarity in zip(spans, similarities, strict=True):
        sentence = passage.chunk.text[start:end]
        focus = max(
            focus_coverage(question, sentence), CONTEXT_SHARE * focus_coverage(question, context)
        )
        typed = carries_value(question, sentence)
        score = (
            SIMILARITY_WEIGHT * float(similarity)
            + FOCUS_WEIGHT * focus
            + TYPE_WEIGHT * typed
            + RANK_WEIGHT / number
            - QUESTION_PENALTY * sentence.rstrip().endswith("?")
        )
        ranked.append(
            Candidate(number, passage, start, end, focus, typed, float(similarity), score, context)
        )
    ranked.sort(key=lambda candidate: candidate.score, reverse=True)
    return ranked


def answerable(question: QuestionIntent, ranked: Sequence[Candidate]) -> bool:
    """Whether some candidate names the focus and carries a value of the right type."""
    return any(candidate.answers(question) for candidate in ranked)


def choose(question: QuestionIntent, ranked: Sequence[Candidate]) -> list[Candidate]:
    """The one to three sentences of the extractive answer, in the order they score.

    The best answering candidate first; others join when they also answer and
    score within :data:`JOIN_SHARE` of it. Nothing when nothing answers.
    """
    asked = period_of(question.text)
    answering = [
        candidate
        for candidate in ranked
        if candidate.answers(question) and period_of(candidate.text) in (None, asked)
    ]
    if asked and not answering:  # no figure for that period: the others still inform
        answering = [candidate for candidate in ranked if candidate.answers(question)]
    if not answering:
        return []
    best = answering[0]
    chosen = [best]
    seen = {" ".join(best.text.split())}
    for candidate in answering[1:]:
        if len(chosen) == MAX_SENTENCES or candidate.score < JOIN_SHARE * best.score:
            break
        key = " ".join(candidate.text.split())
        if key in seen:
            continue
        seen.add(key)
        chosen.append(candidate)
    return chosen


def extractive_text(chosen: Sequence[Candidate]) -> str:
    """The answer: each sentence verbatim (a paragraph each), followed by its citation."""
    return "\n\n".join(f"{' '.join(c.text.split())} [{c.number}]" for c in chosen)
