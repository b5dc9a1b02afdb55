"""Markdown in, chunks that know where they came from out.

A chunk is a span of the extracted Markdown: ``text == markdown[start:end]``
always holds, so a citation quotes the exact passage and the offsets, not a
copy of the text, are the source of truth. Chunks never start or end with
whitespace, and every non-whitespace character of the document is in at least
one chunk.

The cut follows the document's structure, coarsest first:

1. **Sections.** ATX headings (``#`` to ``######``, up to three spaces of
   indent, never inside a fenced code block) start a section. Chunks never
   cross a heading: a new section starts a new chunk, and its heading line
   starts that chunk. ``heading_path`` is the stack of headings above the
   chunk (a ``##`` under a ``#`` gives both; a new ``#`` resets the stack).
2. **Blocks.** A section's blocks are its paragraphs (runs of non-blank
   lines), tables (a header row with a ``|``, then a delimiter row such as
   ``|---|:---:|``) and fenced code blocks. A block that fits the budget is
   one piece, so tables and code stay whole when they fit.
3. **Smaller pieces.** A paragraph over the budget is cut into sentences, a
   table or code block into lines (rows). A piece still over the budget (one
   long sentence) is cut between words into pieces of ``max_tokens -
   overlap_tokens`` (room for the overlap), preferring a clause boundary
   (after ``,`` ``;`` or ``:``) in the second half of the piece; a single
   "word" over the budget (a URL, a base64 blob) is cut between its
   estimated tokens.

Consecutive pieces of the same section are packed greedily into chunks of at
most ``max_tokens`` estimated tokens. A chunk that continues its section
starts with roughly the last ``overlap_tokens`` tokens of the previous chunk:
from the earliest sentence (or piece) start that fits, or, when that would
give less than half the overlap, from a line or word start. The overlap
counts against the budget and shrinks when the next piece leaves no room. A
heading line is the one exception to the budget: it always shares a chunk
with what follows it, so a section's first chunk may run over by its heading
(headings longer than ``max_tokens // 4`` tokens get no such allowance). A
heading with nothing under it (a title right above a subtitle) is not a chunk
of its own either: it opens the next section's first chunk, within the same
allowance.

Page numbers come from the extraction's page spans: the pages covering
``start`` and ``end - 1``.

The scan is one pass over the lines, every regex is linear and each character
is looked at a bounded number of times, so 10 MB of Markdown chunks in
seconds. :func:`iter_chunks` is a generator: chunks come out as the scan
reaches them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from enclave.knowledge.document import PageSpan

__all__ = ["Chunk", "estimate_tokens", "iter_chunks"]

# Scripts the WordPiece vocabulary splits into one token per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_LETTERS = rf"[^\W_{_CJK}]"
# A word's first 8 letters or digits count as one token, each further 4 as one
# more; every CJK character, punctuation mark and underscore is one token.
_TOKEN = re.compile(rf"[{_CJK}]|(?<![^\W_]){_LETTERS}{{1,8}}|{_LETTERS}{{1,4}}|[^\w\s]|_")


def estimate_tokens(text: str) -> int:
    """Roughly how many WordPiece/BPE tokens ``text`` is, without a tokenizer.

    Counts one token per word of up to 8 letters or digits plus one per
    further 4 (long and rare words split into pieces), one per punctuation
    mark or underscore (BERT-style tokenizers split on all punctuation) and
    one per CJK character. On English prose, Markdown and Python source this
    lands within about 20% of the all-MiniLM-L6-v2 tokenizer (a test checks
    it); it undercounts scripts that vocabulary barely covers (Cyrillic,
    Arabic), which split into many more pieces.
    """
    return len(_TOKEN.findall(text))


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage of a document, located by offsets into its Markdown."""

    ordinal: int  # 0-based position in the document
    text: str  # exactly markdown[start:end]
    start: int
    end: int
    heading_path: tuple[str, ...]  # e.g. ("Leave policy", "Parental leave")
    page_start: int | None
    page_end: int | None


_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?\s*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")
_TABLE_DELIMITER = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
# A sentence break: terminal punctuation and optional closing quotes or
# brackets (group 1) then whitespace (Latin scripts), or a CJK full stop.
_SENTENCE_BREAK = re.compile(r"([.!?\u2026][\"')\]\u201d\u2019]*(?=\s)|[\u3002\uff01\uff1f])\s*")
_CLAUSE_END = (",", ";", ":")
_LONG_SPAN_CHARS_PER_TOKEN = 64

_HEADING_KIND = 0
_PARAGRAPH_KIND = 1
_LINES_KIND = 2  # a table or a fenced code block: split by lines


@dataclass(frozen=True, slots=True)
class _Block:
    kind: int
    start: int
    end: int
    level: int = 0
    title: str = ""


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    tokens: int


def iter_chunks(
    markdown: str,
    pages: Sequence[PageSpan] = (),
    *,
    max_tokens: int = 220,
    overlap_tokens: int = 40,
) -> Iterator[Chunk]:
    """Cut ``markdown`` into chunks along its structure; see the module docstring."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError("overlap_tokens must be at least 0 and less than max_tokens")
    page_of = _PageLookup(pages)
    packer = _Packer(markdown, max_tokens, overlap_tokens)
    stack: list[tuple[int, str]] = []
    path: tuple[str, ...] = ()
    ordinal = 0
    for block in _blocks(markdown):
        if block.kind == _HEADING_KIND:
            if not packer.carries(block):
                for span in packer.flush():
                    yield _chunk(markdown, span, ordinal, path, page_of)
                    ordinal += 1
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.title))
            path = tuple(title for _, title in stack)
            for span in packer.heading(block):
                yield _chunk(markdown, span, ordinal, path, page_of)
                ordinal += 1
            continue
        for span in packer.add(block):
            yield _chunk(markdown, span, ordinal, path, page_of)
            ordinal += 1
    for span in packer.flush():
        yield _chunk(markdown, span, ordinal, path, page_of)
        ordinal += 1


def _chunk(
    markdown: str,
    span: tuple[int, int],
    ordinal: int,
    path: tuple[str, ...],
    page_of: _PageLookup,
) -> Chunk:
    start, end = span
    return Chunk(
        ordinal=ordinal,
        text=markdown[start:end],
        start=start,
        end=end,
        heading_path=path,
        page_start=page_of(start),
        page_end=page_of(end - 1),
    )


class _PageLookup:
    """The page number covering an offset, by binary search over the spans."""

    def __init__(self, pages: Sequence[PageSpan]) -> None:
        ordered = sorted(pages, key=lambda page: page.start)
        self._starts = [page.start for page in ordered]
        self._pages = ordered

    def __call__(self, offset: int) -> int | None:
        index = bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self._pages[index].end:
            return self._pages[index].number
        return None


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _blocks(markdown: str) -> Iterator[_Block]:
    """Headings, paragraphs, tables and fenced code blocks, in order, trimmed."""
    length = len(markdown)
    position = 0
    run_start = -1  # the current run of non-blank lines (a paragraph or table)
    run_end = -1
    run_lines = 0
    run_first_line = ""
    run_is_table = False
    fence: tuple[str, int, int] | None = None  # fence character, its length, block start

    def run() -> Iterator[_Block]:
        if run_start >= 0:
            start, end = _trimmed(markdown, run_start, run_end)
            yield _Block(_LINES_KIND if run_is_table else _PARAGRAPH_KIND, start, end)

    while position < length:
        newline = markdown.find("\n", position)
        line_end = length if newline < 0 else newline
        line = markdown[position:line_end]
        if fence is not None:
            stripped = line.strip()
            char, size, fence_start = fence
            closing = stripped.startswith(char * size) and not stripped.strip(char)
            if closing and len(line) - len(line.lstrip(" ")) <= 3:
                yield _Block(_LINES_KIND, *_trimmed(markdown, fence_start, line_end))
                fence = None
        elif not line or line.isspace():
            yield from run()
            run_start = -1
        elif heading := _HEADING.match(line):
            yield from run()
            run_start = -1
            title = _CLOSING_HASHES.sub("", (heading.group(2) or "").strip()).strip()
            start, end = _trimmed(markdown, position, line_end)
            yield _Block(_HEADING_KIND, start, end, len(heading.group(1)), title)
        elif (opening := _FENCE_OPEN.match(line)) and not (
            opening.group(1)[0] == "`" and "`" in line[opening.end() :]
        ):
            yield from run()
            run_start = -1
            marker = opening.group(1)
            fence = (marker[0], len(marker), position)
        elif run_start < 0:
            run_start, run_end, run_lines = position, line_end, 1
            run_first_line, run_is_table = line, False
        else:
            run_end = line_end
            run_lines += 1
            if run_lines == 2 and "|" in run_first_line and "|" in line:
                run_is_table = _TABLE_DELIMITER.match(line) is not None
        position = line_end + 1
    if fence is not None:  # an unclosed fence runs to the end of the document
        start, end = _trimmed(markdown, fence[2], length)
        if start < end:
            yield _Block(_LINES_KIND, start, end)
    yield from run()


class _Packer:
    """Packs one section's pieces into chunk spans, with overlap inside a section."""

    def __init__(self, markdown: str, max_tokens: int, overlap_tokens: int) -> None:
        self.markdown = markdown
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.heading_allowance = max_tokens // 4
        self._reset()

    def _reset(self) -> None:
        self.start = -1  # the open chunk, if any
        self.end = -1
        self.tokens = 0
        self.content_start = -1  # where the open chunk's text after its heading starts
        self.only_heading = False  # the open chunk holds its heading and nothing else
        self.piece_starts: list[int] = []

    def flush(self) -> Iterator[tuple[int, int]]:
        """Close the section: its last chunk, if any."""
        if self.start >= 0:
            yield self.start, self.end
        self._reset()

    def carries(self, block: _Block) -> bool:
        """Whether heading ``block`` joins the open chunk: it holds only headings above it."""
        if not self.only_heading:
            return False
        tokens = estimate_tokens(self.markdown[block.start : block.end])
        return self.tokens + tokens <= self.heading_allowance

    def heading(self, block: _Block) -> Iterator[tuple[int, int]]:
        """Start a section with its heading line (after :meth:`flush` or :meth:`carries`)."""
        tokens = estimate_tokens(self.markdown[block.start : block.end])
        if self.only_heading:
            self.end = block.end
            self.tokens += tokens
        elif tokens > self.heading_allowance:
            # A long heading is packed like a paragraph and gets no allowance.
            yield from self.add(_Block(_PARAGRAPH_KIND, block.start, block.end))
        else:
            self.start, self.end, self.tokens = block.start, block.end, tokens
            self.only_heading = True

    def add(self, block: _Block) -> Iterator[tuple[int, int]]:
        """Pack a block of the current section; yields the chunks it closes."""
        word_budget = self.max_tokens - self.overlap_tokens
        for piece in _pieces(self.markdown, block, self.max_tokens, word_budget):
            if self.start < 0:
                self._open(piece.start, piece)
            elif self.only_heading or self.tokens + piece.tokens <= self.max_tokens:
                self._extend(piece)
            else:
                yield self.start, self.end
                budget = min(self.overlap_tokens, self.max_tokens - piece.tokens)
                self._open(self._overlap_start(budget, piece.start), piece)

    def _open(self, start: int, piece: _Piece) -> None:
        self.start = start
        self.end = piece.end
        self.tokens = piece.tokens
        if start < piece.start:
            self.tokens += estimate_tokens(self.markdown[start : piece.start])
        self.content_start = start
        self.only_heading = False
        self.piece_starts = [piece.start]

    def _extend(self, piece: _Piece) -> None:
        if self.content_start < 0:
            self.content_start = piece.start
        self.end = piece.end
        self.tokens += piece.tokens
        self.only_heading = False
        self.piece_starts.append(piece.start)

    def _overlap_start(self, budget: int, default: int) -> int:
        """Where the next chunk starts: about ``budget`` tokens before this one ends.

        ``default`` (the next piece's start: no overlap) when there is no room,
        nothing but a heading to repeat, or no word start in reach.
        """
        if budget <= 0 or self.content_start < 0:
            return default
        text, low, high = self.markdown, self.content_start, self.end
        # Only the last ``budget`` tokens can be reached. Look at a window that
        # holds them in ordinary text (about 4.5 characters a token); when long
        # words or whitespace leave it short, look at the whole chunk.
        window = max(low, high - 8 * budget - 32)
        tokens = [match.span() for match in _TOKEN.finditer(text, window, high)]
        if window > low and len(tokens) <= budget:
            window = low
            tokens = [match.span() for match in _TOKEN.finditer(text, low, high)]
        # A window's first token may be cut off: never start there.
        first = max(1 if window > low else 0, len(tokens) - budget)
        # Tokens from each reachable start to the chunk's end.
        reach = {
            start: len(tokens) - index for index, (start, _) in enumerate(tokens[first:], first)
        }
        sentence_starts = [start for start in self.piece_starts if start in reach]
        for match in _SENTENCE_BREAK.finditer(text, window, high):
            following = match.end()
            if following in reach and not text[following].islower():
                sentence_starts.append(following)
        line_starts: list[int] = []
        word_starts: list[int] = []
        previous_end = tokens[first - 1][1] if first > 0 else low
        for start, end in tokens[first:]:
            if start == low or start > previous_end:  # whitespace before it
                word_starts.append(start)
                if start == low or "\n" in text[previous_end:start]:
                    line_starts.append(start)
            previous_end = end
        half = (budget + 1) // 2
        for candidates in (sentence_starts, line_starts, word_starts):
            if candidates:
                start = min(candidates)
                if reach[start] >= half or candidates is word_starts:
                    return start
        return default


def _pieces(markdown: str, block: _Block, budget: int, word_budget: int) -> Iterator[_Piece]:
    """A block as pieces of at most ``budget`` tokens, each trimmed of whitespace.

    Cuts between words make pieces of at most ``word_budget`` tokens, which
    leaves room for the overlap in the chunk that continues a long sentence.
    """
    start, end = block.start, block.end
    # Spans this long are over any budget unless they are mostly whitespace,
    # and then packing puts their pieces back together: skip counting them twice.
    long_span = _LONG_SPAN_CHARS_PER_TOKEN * budget
    if end - start <= long_span:
        tokens = estimate_tokens(markdown[start:end])
        if tokens <= budget:
            yield _Piece(start, end, tokens)
            return
    parts = _lines if block.kind == _LINES_KIND else _sentences
    for part_start, part_end in parts(markdown, start, end):
        if part_end - part_start <= long_span:
            tokens = estimate_tokens(markdown[part_start:part_end])
            if tokens <= budget:
                yield _Piece(part_start, part_end, tokens)
                continue
        yield from _words(markdown, part_start, part_end, word_budget)


def _lines(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end:
        newline = text.find("\n", start, end)
        line_end = end if newline < 0 else newline
        line_start, stop = _trimmed(text, start, line_end)
        if line_start < stop:
            yield line_start, stop
        start = line_end + 1


def _sentences(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    sentence_start = start
    for match in _SENTENCE_BREAK.finditer(text, start, end):
        following = match.end()
        if following >= end or text[following].islower():
            continue  # "Mr. Jefferson", "vol. i.": not a sentence break
        yield sentence_start, match.end(1)
        sentence_start = following
    if sentence_start < end:
        yield sentence_start, end


def _words(text: str, start: int, end: int, budget: int) -> Iterator[_Piece]:
    """A span over the budget, cut between words.

    A cut after a clause (a word ending in ``,`` ``;`` or ``:``) in the second
    half of the piece is preferred to the last word start; a single word over
    the budget (a URL, a base64 blob) is cut between its estimated tokens.
    """
    piece_start = -1
    count = 0  # tokens in the piece being built
    previous_end = start
    # Cut candidates in the piece: (position, tokens before it, end of the text before it).
    word_cut: tuple[int, int, int] | None = None
    clause_cut: tuple[int, int, int] | None = None
    for match in _TOKEN.finditer(text, start, end):
        token_start, token_end = match.span()
        if piece_start < 0:
            piece_start = token_start
        elif token_start > previous_end:  # whitespace before: a word starts here
            word_cut = (token_start, count, previous_end)
            if text[previous_end - 1] in _CLAUSE_END and count * 2 >= budget:
                clause_cut = word_cut
        if count == budget:
            cut = clause_cut or word_cut or (token_start, count, previous_end)
            position, before, text_end = cut
            yield _Piece(piece_start, text_end, before)
            piece_start, count = position, count - before
            word_cut = clause_cut = None
        count += 1
        previous_end = token_end
    if piece_start >= 0:
        yield _Piece(piece_start, previous_end, count)
