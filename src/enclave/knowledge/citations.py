"""Citations checked in code: every ``[n]`` must point at a retrieved passage that says it.

The model is asked to cite its sources as ``[1]``, ``[2]``... It is not
trusted to. :func:`cite` reads the answer sentence by sentence:

- a marker is kept only if ``n`` names a passage that was actually given to
  the model *and* that passage supports the sentence (it shares enough of
  the sentence's content words); other markers are removed;
- a sentence without a marker that one passage clearly supports gets one;
- an answer left with no citation at all cites the top passage it was
  grounded in.

Each :class:`Citation` quotes the sentence of its chunk that best matches
what it supports: an exact substring of the chunk, with its offsets in the
document, so a reader can find the passage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from enclave.knowledge.service import Passage
from enclave.knowledge.text import best_sentence, content_words, sentence_spans, support

MARKER = re.compile(r"\s?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# A cited sentence must share at least this share of its content words with the passage.
MARKER_SUPPORT = 0.25
# A sentence the model left uncited gets a marker at this much support.
ADDED_SUPPORT = 0.5
# Sentences shorter than this (in content words) are not judged: "Yes [1]."
MIN_JUDGED_WORDS = 3

Match = Literal["marker", "overlap", "top_passage"]


@dataclass(frozen=True, slots=True)
class Citation:
    """One numbered source of an answer: the passage and the exact words quoted from it."""

    number: int  # the n of [n]; passages are numbered from 1 in the order given to the model
    passage: Passage
    quote: str  # an exact substring of passage.chunk.text
    quote_start: int  # offsets of the quote in the document's Markdown
    quote_end: int
    match: Match  # how it was established: the model's marker, overlap, or the top passage

    def as_dict(self) -> dict[str, Any]:
        found = self.passage.retrieved
        return {
            **self.passage.quoted(self.number, self.quote, self.quote_start, self.quote_end),
            "score": round(found.score, 6),
            "similarity": round(found.similarity, 6),
            "match": self.match,
        }


def best_quote(passage: Passage, words: set[str]) -> tuple[str, int, int]:
    """The sentence of the passage's chunk that shares most of ``words``, with document offsets."""
    chunk = passage.chunk
    text = chunk.text
    span, _ = best_sentence(text, words)
    start, end = span or (0, len(text))
    return text[start:end], chunk.char_start + start, chunk.char_start + end


@dataclass(slots=True)
class _Sentence:
    start: int
    end: int
    words: set[str]
    markers: list[tuple[int, int, list[int]]]  # (start, end, numbers) of each marker


def _sentences(answer: str) -> list[_Sentence]:
    found = []
    for start, end in sentence_spans(answer):
        text = answer[start:end]
        markers = [
            (start + m.start(), start + m.end(), [int(n) for n in m.group(1).split(",")])
            for m in MARKER.finditer(text)
        ]
        found.append(_Sentence(start, end, content_words(MARKER.sub("", text)), markers))
    return found


def cite(
    answer: str, passages: Sequence[Passage], *, rewrite: bool = True
) -> tuple[str, list[Citation]]:
    """Check and complete the citations of ``answer``; return the answer and its citations.

    With ``rewrite=False`` (a stream already sent) the text is returned as
    is and only the citations that hold are listed.
    """
    if not passages or not answer.strip():
        return answer, []
    passage_words = [content_words(p.chunk.text) for p in passages]
    cited: dict[int, tuple[Match, set[str]]] = {}
    removals: list[tuple[int, int]] = []
    additions: list[tuple[int, int]] = []  # (offset, number)

    def keep(number: int, how: Match, words: set[str]) -> None:
        previous = cited.get(number)
        merged = (previous[1] | words) if previous else set(words)
        cited[number] = (previous[0] if previous else how, merged)

    for sentence in _sentences(answer):
        valid_here = False
        for start, end, numbers in sentence.markers:
            good = [
                n
                for n in numbers
                if 1 <= n <= len(passages)
                and (
                    len(sentence.words) < MIN_JUDGED_WORDS
                    or support(sentence.words, passage_words[n - 1]) >= MARKER_SUPPORT
                )
            ]
            for n in good:
                keep(n, "marker", sentence.words)
            valid_here = valid_here or bool(good)
            if len(good) != len(numbers):
                removals.append((start, end))
                if good:
                    additions.append((start, good[0]))
        if valid_here or len(sentence.words) < MIN_JUDGED_WORDS:
            continue
        scores = [support(sentence.words, words) for words in passage_words]
        best = max(range(len(passages)), key=scores.__getitem__)
        if scores[best] >= ADDED_SUPPORT:
            keep(best + 1, "overlap", sentence.words)
            end = sentence.end
            while end > sentence.start and answer[end - 1] in ".!?":
                end -= 1
            additions.append((end, best + 1))
    if not cited:
        keep(1, "top_passage", content_words(answer))
        additions.append((len(answer.rstrip()), 1))
    if rewrite:
        answer = _rewrite(answer, removals, additions)
    citations = []
    for number in sorted(cited):
        how, words = cited[number]
        passage = passages[number - 1]
        quote, start, end = best_quote(passage, words)
        citations.append(Citation(number, passage, quote, start, end, how))
    return answer, citations


def _rewrite(answer: str, removals: list[tuple[int, int]], additions: list[tuple[int, int]]) -> str:
    edits: list[tuple[int, int, str]] = [(start, end, "") for start, end in removals]
    edits += [(offset, offset, f" [{number}]") for offset, number in additions]
    # Apply from the end so earlier offsets stay valid; an insertion at a removal's
    # start goes where the removed marker was.
    for start, end, text in sorted(edits, key=lambda edit: (edit[0], edit[1]), reverse=True):
        answer = answer[:start] + text + answer[end:]
    return answer
