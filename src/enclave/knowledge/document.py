"""What extraction produces and chunking consumes: Markdown with page spans."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PageSpan:
    """Page ``number`` (from 1) covers ``markdown[start:end]``."""

    number: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ExtractedDocument:
    """A document converted to Markdown that keeps its headings.

    ``pages`` is empty for formats without pages; for a PDF it maps every
    character offset of ``markdown`` to its page, so a chunk knows its pages.
    """

    markdown: str
    format: str  # "pdf", "docx", "html", "markdown", "text", "csv" or "json"
    title: str | None = None
    pages: tuple[PageSpan, ...] = ()
