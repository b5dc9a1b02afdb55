"""Clarifying questions: when the sources answer more than one reading of the question.

Two kinds of ambiguity are decided in code:

- **period**: the question asks for a figure without saying per what, and
  the answering sentences give it per different periods ("2,000 a day" and
  "700,000 a year"). That is not a disagreement, it is two questions.
- **entity**: the question names someone by one name ("Smith") and the
  sources hold different people with that name ("John Smith", "Mary Smith").

The answer is then a question back, with each option quoted and cited, and
a ``grounding.clarify`` field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclave.knowledge.extractive import Candidate
from enclave.knowledge.facts import TITLES, name_key, numbers
from enclave.knowledge.questions import PERIODS, QuestionIntent, period_of

PERIOD_WORDS = {"day": "daily", "week": "weekly", "month": "monthly", "quarter": "quarterly",
                "year": "yearly"}  # fmt: skip
_FULL_NAME = r"\b([A-Z][\w'\u2019-]+(?:\s+[A-Z]\.)?)\s+{name}\b(?!\s+[A-Z])"


@dataclass(frozen=True, slots=True)
class Option:
    """One reading of the question, with the sentence that answers it."""

    label: str  # "daily", "John Smith"
    candidate: Candidate

    def as_dict(self) -> dict[str, Any]:
        start, end = self.candidate.document_span
        return {
            "label": self.label,
            **self.candidate.passage.quoted(self.candidate.number, self.candidate.text, start, end),
        }


@dataclass(frozen=True, slots=True)
class Clarification:
    """The question back to the user, and the readings it offers."""

    kind: str  # "period" or "entity"
    question: str
    options: tuple[Option, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "question": self.question,
            "options": [option.as_dict() for option in self.options],
        }

    def text(self) -> str:
        lines = [self.question]
        for option in self.options:
            quote = " ".join(option.candidate.text.split())
            lines.append(f'- {option.label}: "{quote}" [{option.candidate.number}]')
        return "\n".join(lines)


def _by_period(question: QuestionIntent, ranked: Sequence[Candidate]) -> Clarification | None:
    if question.answer_type != "number" or any(p.search(question.text) for p in PERIODS.values()):
        return None
    options: dict[str, Candidate] = {}
    for candidate in ranked:
        if not candidate.answers(question) or not numbers(candidate.text):
            continue
        period = period_of(candidate.text)
        if period is not None and period not in options:
            options[period] = candidate
    if len(options) < 2:
        return None
    options = dict(sorted(options.items(), key=lambda item: item[1].number))
    labels = [PERIOD_WORDS[period] for period in options]
    asked = ", the ".join(labels[:-1]) + f" or the {labels[-1]}"
    return Clarification(
        "period",
        f"The sources give this figure for more than one period. Do you mean the {asked} one?",
        tuple(Option(PERIOD_WORDS[period], c) for period, c in options.items()),
    )


def _by_entity(question: QuestionIntent, ranked: Sequence[Candidate]) -> Clarification | None:
    asked = re.findall(r"\b[A-Z][\w'\u2019-]+", question.text)
    for name in asked[1:] if asked and question.text.lstrip().startswith(asked[0]) else asked:
        if re.search(
            rf"\b[A-Z][\w'\u2019-]+\s+{re.escape(name)}\b|\b{re.escape(name)}\s+[A-Z]",
            question.text,
        ):
            continue  # the question gives a full name ("Annie Ernaux", "New Zealand")
        pattern = re.compile(_FULL_NAME.format(name=re.escape(name)))
        options: dict[str, Candidate] = {}
        for candidate in ranked:
            if not candidate.answers(question):
                continue
            for match in pattern.finditer(candidate.text):
                first = name_key(match.group(1))
                if first in question.names or first in TITLES:
                    continue
                full = f"{match.group(1)} {name}"
                if not any(first == name_key(k.split()[0]) for k in options):
                    options[full] = candidate
        if len(options) >= 2:
            options = dict(sorted(options.items(), key=lambda item: item[1].number))
            labels = list(options)
            listed = ", ".join(labels[:-1]) + f" or {labels[-1]}"
            return Clarification(
                "entity",
                f"The sources mention more than one {name}. Which do you mean: {listed}?",
                tuple(Option(label, c) for label, c in options.items()),
            )
    return None


def find_ambiguity(question: QuestionIntent, ranked: Sequence[Candidate]) -> Clarification | None:
    """A clarifying question when the sources answer different readings of ``question``."""
    return _by_period(question, ranked) or _by_entity(question, ranked)
