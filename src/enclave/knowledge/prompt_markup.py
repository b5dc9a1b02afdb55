"""The grounding prompt's own markup, kept out of answers.

A grounded prompt quotes passages as ``<source id="1" from="...">…</source>``
and asks for ``[n]`` markers. A small model sometimes echoes the tags, or cites
``[2]`` when it was given one source. :func:`strip_prompt_markup` removes both
from a finished answer; :class:`MarkupStripper` does the same to a stream of
text pieces, holding back only what could still become a tag or a marker.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"</?source\b[^<>]{0,300}>\s?", re.I)
_MARKER = re.compile(r"\s?\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
# A tail that may still grow into a tag (``<sou``, ``<source id="1" fr``) or a marker (``[1,``).
_OPEN_TAG = re.compile(r"<(?:/?(?:s(?:o(?:u(?:r(?:c(?:e(?:\b[^<>]{0,300})?)?)?)?)?)?)?)?$", re.I)
_OPEN_MARKER = re.compile(r"\s?\[[\d\s,]{0,20}$")


def _markers(match: re.Match[str], sources: int) -> str:
    numbers = [int(n) for n in match.group(1).split(",")]
    kept = [n for n in numbers if 1 <= n <= sources]
    if not kept:
        return ""
    if len(kept) == len(numbers):
        return match.group(0)
    space = " " if match.group(0)[0].isspace() else ""
    return f"{space}[{', '.join(map(str, kept))}]"


def strip_prompt_markup(text: str, sources: int) -> str:
    """``text`` without ``<source>`` tags and without markers for passages 1..``sources``
    does not have."""
    text = _TAG.sub("", text)
    return _MARKER.sub(lambda match: _markers(match, sources), text)


class MarkupStripper:
    """:func:`strip_prompt_markup` for text that arrives in pieces."""

    def __init__(self, sources: int) -> None:
        self.sources = sources
        self._held = ""

    def feed(self, piece: str) -> str:
        """What of ``held + piece`` can go out now; a possible tag or marker start waits."""
        text = strip_prompt_markup(self._held + piece, self.sources)
        cut = len(text)
        for pattern in (_OPEN_TAG, _OPEN_MARKER):
            found = pattern.search(text)
            if found is not None:
                cut = min(cut, found.start())
        self._held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The rest, once the stream has ended."""
        rest, self._held = strip_prompt_markup(self._held, self.sources), ""
        return rest
