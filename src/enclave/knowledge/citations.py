"""Citations checked claim by claim: every ``[n]`` must point at a passage that says it.

The model is asked to cite its sources as ``[1]``, ``[2]``... It is not
trusted to. :func:`verify` reads the answer sentence by sentence and takes
each sentence's checkable content (:mod:`.facts`: numbers, dates, names,
quoted phrases, rare words):

- a marker is kept only if ``n`` names a passage that was given to the
  model *and* that passage holds the sentence's checkable content;
- a sentence the model left uncited gets the marker of a passage that holds
  its content;
- a sentence with checkable content that no passage holds is
  **unsupported**: removed from the answer (``policy="remove"``), or kept
  without a marker and reported (``"flag"``);
- a sentence with nothing to check ("I hope this helps.") stays, uncited.

Each :class:`Citation` quotes the sentence of its chunk that best matches
what it supports: an exact substring of the chunk, with its offsets in the
document, so a reader can find the passage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from enclave.knowledge.facts import Evidence, Facts, facts, supports
from enclave.knowledge.service import Passage
from enclave.knowledge.text import best_sentence, content_words, sentence_spans, support

MARKER = re.compile(r"\s?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")

Match = Literal["marker", "overlap", "extractive"]
Policy = Literal["remove", "flag", "keep"]


@dataclass(frozen=True, slots=True)
class Citation:
    """One numbered source of an answer: the passage and the exact words quoted from it."""

    number: int  # the n of [n]; passages are numbered from 1 in the order given to the model
    passage: Passage
    quote: str  # an exact substring of passage.chunk.text
    quote_start: int  # offsets of the quote in the document's Markdown
    quote_end: int
    match: Match  # how it was established: the model's marker, overlap, or an extract

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
class Verified:
    """An answer after checking: its text, citations, and what could not be supported."""

    text: str
    citations: list[Citation]
    unsupported: list[str] = field(default_factory=list)  # removed or flagged sentences
    supported: int = 0  # sentences with checkable content that a passage holds

    def annotations(self) -> list[dict[str, Any]]:
        """OpenAI-style ``url_citation`` annotations: each cited sentence's span in
        :attr:`text` (``start_index``/``end_index``), pointing at its passage."""
        by_number = {citation.number: citation for citation in self.citations}
        found = []
        for start, end in sentence_spans(self.text):
            sentence = self.text[start:end]
            markers = list(MARKER.finditer(sentence))
            if not markers:
                continue
            span_start, cut = start, start + markers[0].start()
            while cut > start and self.text[cut - 1] == " ":
                cut -= 1
            if not self.text[start:cut].strip(" -*+"):  # "- [1] leave.md: ..." cites what follows
                span_start, cut = start + markers[-1].end(), end
                while span_start < cut and self.text[span_start] in " :":
                    span_start += 1
            for marker in markers:
                for number in _numbers(marker):
                    citation = by_number.get(number)
                    if citation is None:
                        continue
                    passage = citation.passage
                    found.append(
                        {
                            "type": "url_citation",
                            "url_citation": {
                                "start_index": span_start,
                                "end_index": cut,
                                "url": f"kb://{passage.knowledge_base}/{passage.document_name}"
                                f"#chunk-{passage.chunk.id}",
                                "title": passage.document_title or passage.document_name,
                                "number": number,
                            },
                        }
                    )
        return found


def _numbers(marker: re.Match[str]) -> list[int]:
    return [int(n) for n in marker.group(1).split(",")]


@dataclass(slots=True)
class _Sentence:
    start: int
    end: int
    claim: Facts
    words: set[str]
    markers: list[tuple[int, int, list[int]]]  # (start, end, numbers) of each marker


def _sentences(answer: str, question: str) -> list[_Sentence]:
    found = []
    for start, end in sentence_spans(answer):
        text = answer[start:end]
        markers = [(start + m.start(), start + m.end(), _numbers(m)) for m in MARKER.finditer(text)]
        bare = MARKER.sub("", text)
        found.append(
            _Sentence(start, end, facts(bare, question=question), content_words(bare), markers)
        )
    return found


def verify(
    answer: str,
    passages: Sequence[Passage],
    *,
    question: str = "",
    policy: Policy = "remove",
    rewrite: bool = True,
) -> Verified:
    """Check and complete the citations of ``answer`` (see the module docstring).

    ``question`` keeps the question's own words from counting as claims.
    With ``rewrite=False`` (an answer already sent, or JSON) the text is
    returned as is and only the citations that hold are listed.
    """
    if not passages or not answer.strip():
        return Verified(answer, [])
    evidence = [Evidence.of(p.chunk.text) for p in passages]
    passage_words = [content_words(p.chunk.text) for p in passages]
    cited: dict[int, tuple[Match, set[str]]] = {}
    edits: list[tuple[int, int, str]] = []
    unsupported: list[str] = []
    supported = 0

    def keep(number: int, how: Match, words: set[str]) -> None:
        previous = cited.get(number)
        cited[number] = (
            previous[0] if previous else how,
            (previous[1] if previous else set()) | words,
        )

    for sentence in _sentences(answer, question):
        words = sentence.words | set(sentence.claim.numbers)
        holders = [i + 1 for i, found in enumerate(evidence) if supports(sentence.claim, found)]
        marked = [n for _, _, numbers in sentence.markers for n in numbers]
        good = [n for n in dict.fromkeys(marked) if n in holders]
        if sentence.claim.checkable and not holders:
            unsupported.append(
                " ".join(MARKER.sub("", answer[sentence.start : sentence.end]).split())
            )
            if policy == "remove":
                edits.append((sentence.start, sentence.end, ""))
                continue
            edits += [(start, end, "") for start, end, _ in sentence.markers]
            continue
        if sentence.claim.checkable:
            supported += 1
        if not sentence.claim.checkable:
            good = [n for n in dict.fromkeys(marked) if 1 <= n <= len(passages)]
        for n in good:
            keep(n, "marker", words)
        if good:
            if good != marked or len(sentence.markers) > 1:
                edits += [(start, end, "") for start, end, _ in sentence.markers]
                edits.append(
                    (
                        _end_of_words(answer, sentence),
                        _end_of_words(answer, sentence),
                        _marker(good),
                    )
                )
            continue
        edits += [(start, end, "") for start, end, _ in sentence.markers]
        if not sentence.claim.checkable:
            continue
        best = max(holders, key=lambda n: support(sentence.words, passage_words[n - 1]))
        keep(best, "overlap", words)
        offset = _end_of_words(answer, sentence)
        edits.append((offset, offset, _marker([best])))
    text = _apply(answer, edits) if rewrite else answer
    citations = []
    for number in sorted(cited):
        how, words = cited[number]
        passage = passages[number - 1]
        quote, start, end = best_quote(passage, words)
        citations.append(Citation(number, passage, quote, start, end, how))
    return Verified(text, citations, unsupported, supported)


def _marker(numbers: Sequence[int]) -> str:
    return " " + "".join(f"[{n}]" for n in numbers)


def _end_of_words(answer: str, sentence: _Sentence) -> int:
    """Where a marker goes: after the sentence's last word, before its end punctuation
    and any markers."""
    start, end = sentence.start, sentence.end
    while end > start:
        if answer[end - 1] in ".!? ":
            end -= 1
            continue
        trailing = re.search(r"\s?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]$", answer[start:end])
        if trailing is None:
            break
        end = start + trailing.start()
    return end


def _apply(answer: str, edits: list[tuple[int, int, str]]) -> str:
    # From the end, so earlier offsets stay valid; a removal and an insertion at the
    # same place: the removal first (it is the later one in the sorted order).
    for start, end, text in sorted(edits, key=lambda edit: (edit[0], edit[1]), reverse=True):
        answer = answer[:start] + text + answer[end:]
    return re.sub(r"[ \t]+\n", "\n", re.sub(r"\n{3,}", "\n\n", answer)).strip()


def extract_citations(
    chosen: Sequence[tuple[int, Passage, str, int, int]],
) -> list[Citation]:
    """Citations of an extractive answer: each chosen sentence quoted as it is."""
    citations: dict[int, Citation] = {}
    for number, passage, quote, start, end in chosen:
        citations.setdefault(number, Citation(number, passage, quote, start, end, "extractive"))
    return [citations[number] for number in sorted(citations)]
