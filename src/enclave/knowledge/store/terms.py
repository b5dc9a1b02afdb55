"""Free text to search terms, the same way for every store's lexical search.

A user's question is never parsed as query syntax: it is cut into word
tokens (letters and digits; quotes, brackets, ``*``, ``-``, ``_`` all
separate words), lowercased, stripped of one-letter tokens and a short
English stopword list, and de-duplicated in order. Each store then ORs the
terms in its own syntax (quoted FTS5 strings, a ``to_tsquery`` with ``|``),
so ``NEAR``, ``AND`` or an unbalanced quote in a question is only a word.

:func:`plan_terms` then keeps a question with very common words from
ranking most of the corpus: both stores rank every matching chunk before
sorting, so the cost of a search grows with the chunks its terms match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from enclave.knowledge.text import STOPWORDS

# More terms make a query slower (every term's postings are read and scored)
# and rarely better: a question's first dozens of words carry its topic.
MAX_TERMS = 32

_WORD = re.compile(r"[^\W_]+")


def query_terms(text: str, limit: int = MAX_TERMS) -> list[str]:
    """The distinct searchable words of ``text``, in order, at most ``limit``."""
    terms: list[str] = []
    seen: set[str] = set()
    for match in _WORD.finditer(text.lower()):
        token = match.group()
        if len(token) < 2 or token in STOPWORDS or token in seen:
            continue
        seen.add(token)
        terms.append(token)
        if len(terms) >= limit:
            break
    return terms


@dataclass(frozen=True, slots=True)
class TermPlan:
    """The terms a lexical search runs: any of them (``OR``) or all (``AND``)."""

    terms: tuple[str, ...]
    require_all: bool = False


def plan_terms(frequency: Mapping[str, int], total: int, budget: int) -> TermPlan | None:
    """Choose terms so that at most about ``budget`` matching chunks need ranking.

    ``frequency`` maps each term, in question order, to the number of chunks
    that hold it (estimates are fine); ``total`` is the number of chunks.
    Ranking costs per matching chunk (BM25 in FTS5, ``ts_rank_cd`` in
    Postgres), so a word found in most chunks would make every question
    containing it slow. Within the budget the plan is exact: every term that
    occurs, ORed. Above it, terms in more than half the chunks go first (their
    IDF is about zero, so the ranking hardly changes), then the most frequent
    ones until the rest fit: the terms that cost the most carry the least
    weight, as with Lucene's cutoff frequency. If even the rarest term is too
    frequent, every remaining term must match (``AND``), which the caller
    checks against the budget. ``None``: no term occurs, or nothing is left.
    """
    found = [term for term in frequency if frequency[term] > 0]
    if not found:
        return None
    if sum(frequency[term] for term in found) <= budget:
        return TermPlan(tuple(found))
    informative = sorted(
        (term for term in found if frequency[term] <= total / 2), key=frequency.__getitem__
    )
    kept: list[str] = []
    rows = 0
    for term in informative:
        if rows + frequency[term] > budget:
            break
        kept.append(term)
        rows += frequency[term]
    if kept:
        return TermPlan(tuple(kept))
    if len(informative) > 1:
        return TermPlan(tuple(informative), require_all=True)
    return None
