"""Turn one file on disk into Markdown that keeps its headings (and a PDF's pages).

The format is decided by :func:`detect_format`: magic bytes first (a PDF or a
Word ZIP cannot lie about themselves), then the file name's extension, then the
media type the uploader or web server claimed. Each format has one converter:

- PDF through pypdf, page by page; ``pages`` records where each page's text
  lies in the Markdown, so a chunk can cite its page numbers. Permission-only
  encryption (an empty user password) is opened transparently.
- DOCX through python-docx, after a cheap look at the ZIP directory refuses
  zip bombs without inflating a byte of them.
- HTML through trafilatura (main content, headings as ``#`` lines), with a
  small lxml walk as the fallback for pages trafilatura finds too short.
- Markdown and text are decoded and kept as they are; CSV becomes Markdown
  tables in groups of rows that each repeat the header; JSON becomes headings
  and ``key: value`` lines a retriever can match on.

Every failure is an :class:`ExtractionError` whose message can be shown to the
user as-is; no parser exception or traceback escapes :func:`extract`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from enclave.errors import InvalidRequest
from enclave.knowledge.document import ExtractedDocument, PageSpan

SUPPORTED_LABEL = "PDF, DOCX, HTML, Markdown, text, CSV, JSON"

HEAD_BYTES = 8192
MIB = 2**20

# Zip-bomb guard for DOCX: a real document is small and compresses maybe 10:1.
DOCX_MAX_EXPANDED_BYTES = 200 * MIB  # or 100x max_bytes, whichever is smaller
DOCX_MAX_EXPANSION_FACTOR = 100
DOCX_MAX_RATIO = 100  # per entry, checked on entries that expand past 1 MiB
DOCX_RATIO_MIN_BYTES = MIB
DOCX_MAX_ENTRIES = 10_000

CSV_ROWS_PER_TABLE = 50
JSON_MAX_HEADING_LEVEL = 6

EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
}
MEDIA_TYPES = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/csv": "csv",
    "text/tab-separated-values": "csv",
    "application/json": "json",
    "text/json": "json",
}


class ExtractionError(InvalidRequest):
    """A document that cannot be read; ``str(exc)`` is a readable reason for the user."""


# ---------------------------------------------------------------- detection
def detect_format(name: str, media_type: str | None, head: bytes) -> str:
    """The format of a file: magic bytes, then extension, then media type.

    Raises :class:`ExtractionError` for any other format than those in
    :data:`SUPPORTED_LABEL`.
    """
    suffix = PurePosixPath(name.strip()).suffix.lower()
    mime = (media_type or "").split(";", 1)[0].strip().lower()
    if head.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if b"word/document.xml" in head or suffix == ".docx" or MEDIA_TYPES.get(mime) == "docx":
            return "docx"
        raise _unsupported(suffix or "a ZIP archive")
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    # An unknown "extension" may be no extension at all ("example.org" from a URL).
    if mime in MEDIA_TYPES:
        return MEDIA_TYPES[mime]
    if mime.endswith("+json"):
        return "json"
    if suffix:
        raise _unsupported(suffix)
    sniffed = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if sniffed.startswith((b"<!doctype html", b"<html")):
        return "html"
    if b"\x00" not in head and _is_utf8(head):
        return "text"
    raise _unsupported(mime or "unknown binary data")


def _unsupported(what: str) -> ExtractionError:
    return ExtractionError(f"unsupported format: {what} (supported: {SUPPORTED_LABEL})")


def _is_utf8(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


# -------------------------------------------------------------- entry point
def extract(
    path: Path, *, name: str, media_type: str | None = None, max_bytes: int = 50 * MIB
) -> ExtractedDocument:
    """Read one file into an :class:`ExtractedDocument`; raise :class:`ExtractionError`."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise ExtractionError("empty document")
        if size > max_bytes:
            raise ExtractionError(f"too large: {_mb(size)} (limit {_mb(max_bytes)})")
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise ExtractionError(f"cannot read the file: {exc.strerror or exc}") from exc

    fmt = detect_format(name, media_type, head)
    try:
        if fmt == "pdf":
            document = _extract_pdf(path)
        elif fmt == "docx":
            document = _extract_docx(path, max_bytes)
        else:
            data = path.read_bytes()
            if fmt == "html":
                document = _extract_html(data)
            else:
                text = _decode(data)
                converters = {
                    "markdown": _extract_markdown,
                    "text": _extract_text,
                    "csv": _extract_csv,
                    "json": _extract_json,
                }
                document = converters[fmt](text)
    except ExtractionError:
        raise
    except RecursionError as exc:
        raise ExtractionError(f"cannot read {fmt}: it is nested too deeply") from exc
    except Exception as exc:  # a parser bug or a hostile file: never a traceback
        raise ExtractionError(f"cannot read {fmt}: {short_reason(exc)}") from exc
    if not document.markdown.strip():
        raise ExtractionError("no text found")
    return document


def _mb(size: int) -> str:
    if size < MIB // 10:
        return f"{size / 1024:.1f} KB".replace(".0 KB", " KB")
    return f"{size / MIB:.1f} MB".replace(".0 MB", " MB")


def short_reason(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters (its type if it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ----------------------------------------------------------- normalisation
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """Unix newlines, no control characters or trailing spaces, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


def _decode(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: object) -> str:
    return _one_line(str(text)).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> str:
    width = max([len(header), *(len(row) for row in rows)])
    header = header + [""] * (width - len(header))
    lines = ["| " + " | ".join(_cell(c) for c in header) + " |"]
    lines.append("|" + "---|" * width)
    for row in rows:
        cells = [_cell(c) for c in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------- PDF
def _extract_pdf(path: Path) -> ExtractedDocument:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except DependencyError as exc:
                raise _aes_error() from exc
            if not opened:
                raise ExtractionError("encrypted PDF: a password is needed to read it")
        count = len(reader.pages)
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"corrupt PDF: {short_reason(exc)}") from exc
    if count == 0:
        raise ExtractionError("corrupt PDF: it has no pages")

    parts: list[str] = []
    spans: list[PageSpan] = []
    offset = 0
    for number in range(1, count + 1):
        try:
            text = normalise(reader.pages[number - 1].extract_text() or "")
        except DependencyError as exc:
            raise _aes_error() from exc
        except Exception as exc:
            raise ExtractionError(f"corrupt PDF: page {number}: {short_reason(exc)}") from exc
        if not text:
            continue  # an empty page covers no text, so it gets no span
        if parts:
            offset += 2  # the blank line between pages
        spans.append(PageSpan(number, offset, offset + len(text)))
        parts.append(text)
        offset += len(text)
    if not parts:
        raise ExtractionError("no text found (a scanned PDF? OCR is not supported)")
    return ExtractedDocument(
        markdown="\n\n".join(parts), format="pdf", title=_pdf_title(reader), pages=tuple(spans)
    )


def _aes_error() -> ExtractionError:
    return ExtractionError(
        "encrypted PDF: it uses AES, which needs the 'cryptography' package on the server"
    )


def _pdf_title(reader: Any) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # broken metadata is no reason to refuse the text
        return None
    return (_one_line(str(title)) or None) if title else None


# -------------------------------------------------------------------- DOCX
def _check_docx_archive(path: Path, max_bytes: int) -> None:
    """Refuse zip bombs from the central directory alone: nothing is inflated.

    zipfile stops reading an entry at its declared size, so the declared sizes
    checked here bound what python-docx can inflate later.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ExtractionError(f"corrupt DOCX: {short_reason(exc)}") from exc
    if len(entries) > DOCX_MAX_ENTRIES:
        raise ExtractionError(f"refused DOCX: it has {len(entries)} files inside (a zip bomb?)")
    cap = min(DOCX_MAX_EXPANDED_BYTES, DOCX_MAX_EXPANSION_FACTOR * max_bytes)
    total = sum(entry.file_size for entry in entries)
    if total > cap:
        raise ExtractionError(f"refused DOCX: it would expand to {_mb(total)} (a zip bomb?)")
    for entry in entries:
        if entry.file_size > DOCX_RATIO_MIN_BYTES and entry.file_size > DOCX_MAX_RATIO * max(
            entry.compress_size, 1
        ):
            ratio = entry.file_size // max(entry.compress_size, 1)
            raise ExtractionError(
                f"refused DOCX: {entry.filename} would expand {ratio}:1 (a zip bomb?)"
            )
    if "word/document.xml" not in {entry.filename for entry in entries}:
        raise ExtractionError("corrupt DOCX: it has no word/document.xml")


def _extract_docx(path: Path, max_bytes: int) -> ExtractedDocument:
    import docx
    from docx.table import Table

    _check_docx_archive(path, max_bytes)
    try:
        document = docx.Document(str(path))
        blocks = list(document.iter_inner_content())
        core_title = document.core_properties.title
    except Exception as exc:
        raise ExtractionError(f"corrupt DOCX: {short_reason(exc)}") from exc

    lines: list[str] = []
    title = _one_line(core_title or "") or None
    for block in blocks:
        if isinstance(block, Table):
            rows = [[cell.text for cell in row.cells] for row in block.rows]
            if rows:
                lines += ["", _table(rows[0], rows[1:]), ""]
            continue
        text = _one_line(block.text)
        if not text:
            continue
        style = (block.style.name if block.style is not None else "") or ""
        level = _heading_level(style)
        if level:
            title = title or (text if style.lower() == "title" else None)
            lines += ["", "#" * level + " " + text, ""]
        elif style.lower().startswith("list") or _has_numbering(block):
            lines.append("- " + text)
        else:
            lines += ["", text, ""]
    return ExtractedDocument(markdown=normalise("\n".join(lines)), format="docx", title=title)


def _heading_level(style: str) -> int:
    lowered = style.lower()
    if lowered == "title":
        return 1
    match = re.fullmatch(r"heading (\d)", lowered)
    return min(int(match.group(1)), 6) if match else 0


def _has_numbering(paragraph: Any) -> bool:
    properties = paragraph._p.pPr
    return properties is not None and properties.numPr is not None


# -------------------------------------------------------------------- HTML
_DROPPED_TAGS = (
    "script",
    "style",
    "noscript",
    "template",
    "iframe",
    "object",
    "embed",
    "svg",
    "nav",
)
_BLOCK_TAG_NAMES = (
    "address article aside blockquote body caption dd div dl dt fieldset figcaption figure "
    "footer form header li main nav ol p pre section table tbody thead tfoot ul"
)
_BLOCK_TAGS = frozenset(_BLOCK_TAG_NAMES.split())
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


def _extract_html(data: bytes) -> ExtractedDocument:
    import lxml.html
    import trafilatura

    try:
        root = lxml.html.document_fromstring(data)
    except Exception as exc:  # lxml refuses documents with no elements at all
        raise ExtractionError(f"no text found in the HTML ({short_reason(exc)})") from exc
    for element in root.xpath("|".join(f"//{tag}" for tag in _DROPPED_TAGS)):
        element.drop_tree()
    title = _one_line(root.findtext(".//title") or "") or None
    if title is None:
        first_heading = root.find(".//h1")
        if first_heading is not None:
            title = _one_line(first_heading.text_content()) or None

    # trafilatura sees the cleaned tree, so no script can reach the output
    # whatever it does. In trafilatura 2.x output_format="markdown" implies
    # include_formatting, and headings come out as "#" lines, but only when its
    # main-content extractor wins: on short pages it falls back to plain lines
    # with no structure. Then the small walk below does better.
    cleaned = lxml.html.tostring(root, encoding="unicode")
    markdown = trafilatura.extract(
        cleaned,
        output_format="markdown",
        include_formatting=True,
        include_tables=True,
        include_links=False,
        include_images=False,
        include_comments=False,
        favor_recall=True,
    )
    if not _looks_structured(markdown, has_headings=bool(root.xpath(_HEADING_XPATH))):
        markdown = _html_to_markdown(root)
    return ExtractedDocument(markdown=normalise(markdown or ""), format="html", title=title)


_HEADING_XPATH = "//body//*[" + " or ".join(f"self::h{n}" for n in range(1, 7)) + "]"
_MARKDOWN_HEADING = re.compile(r"^#{1,6} ", re.MULTILINE)
TRAFILATURA_MIN_CHARS = 500


def _looks_structured(markdown: str | None, *, has_headings: bool) -> bool:
    if not markdown or len(markdown) < TRAFILATURA_MIN_CHARS:
        return False
    return not has_headings or bool(_MARKDOWN_HEADING.search(markdown))


def _html_to_markdown(root: Any) -> str:
    """The fallback: headings, paragraphs, list items and table rows, in order."""
    out: list[str] = []
    buffer: list[str] = []
    pending_prefix = [""]

    def flush() -> None:
        text = _one_line("".join(buffer))
        buffer.clear()
        if text:
            out.append(pending_prefix[0] + text)
            pending_prefix[0] = ""

    def visit(element: Any) -> None:
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag in _HEADINGS:
            flush()
            text = _one_line(element.text_content())
            if text:
                out.append("#" * _HEADINGS[tag] + " " + text)
            return
        if tag == "head":
            return
        if tag == "table":
            flush()
            rows = [
                [c.text_content() for c in tr if c.tag in ("td", "th")] for tr in element.iter("tr")
            ]
            rows = [row for row in rows if any(cell.strip() for cell in row)]
            if rows:
                out.append(_table(rows[0], rows[1:]))
            return
        if tag == "br":
            buffer.append(" ")
            return
        block = tag in _BLOCK_TAGS
        if block:
            flush()
        if tag == "li":
            pending_prefix[0] = "- "
        if tag and element.text:
            buffer.append(element.text)
        for child in element:
            visit(child)
            if child.tail:
                buffer.append(child.tail)
        if block:
            flush()

    body = root.find("body")
    visit(body if body is not None else root)
    flush()
    # Blocks are paragraphs apart, except that a list's items stay together.
    joined: list[str] = []
    for i, block in enumerate(out):
        if i:
            in_list = block.startswith("- ") and out[i - 1].startswith("- ")
            joined.append("\n" if in_list else "\n\n")
        joined.append(block)
    return "".join(joined)


# ---------------------------------------------------------- text and Markdown
def _extract_text(text: str) -> ExtractedDocument:
    return ExtractedDocument(markdown=normalise(text), format="text")


def _extract_markdown(text: str) -> ExtractedDocument:
    markdown = normalise(text)
    return ExtractedDocument(markdown=markdown, format="markdown", title=_markdown_title(markdown))


def _markdown_title(markdown: str) -> str | None:
    fenced = False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("# "):
            return line[2:].strip().rstrip("#").strip() or None
    return None


# ---------------------------------------------------------------------- CSV
def _extract_csv(text: str) -> ExtractedDocument:
    sample = text[:65536]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ExtractionError(f"invalid CSV: line {reader.line_num}: {exc}") from exc
    if not rows:
        raise ExtractionError("no text found")
    header, body = rows[0], rows[1:]
    if len(body) <= CSV_ROWS_PER_TABLE:
        return ExtractedDocument(markdown=_table(header, body), format="csv")
    sections = []
    for start in range(0, len(body), CSV_ROWS_PER_TABLE):
        group = body[start : start + CSV_ROWS_PER_TABLE]
        heading = f"## Rows {start + 1}\u2013{start + len(group)}"
        sections.append(heading + "\n\n" + _table(header, group))
    return ExtractedDocument(markdown="\n\n".join(sections), format="csv")


# --------------------------------------------------------------------- JSON
def _extract_json(text: str) -> ExtractedDocument:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtractionError(
            f"invalid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    markdown = normalise("\n".join(_json_lines(value, [], 0)))
    return ExtractedDocument(markdown=markdown, format="json")


_TITLE_KEYS = ("title", "name", "id")


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_scalar(value: object) -> bool:
    return not isinstance(value, dict | list)


def _is_flat(value: object) -> bool:
    """A value printed as lines, with no heading: a scalar or a list of scalars."""
    return _is_scalar(value) or (isinstance(value, list) and all(map(_is_scalar, value)))


def _json_lines(value: object, path: list[str], level: int) -> Iterator[str]:
    """Lines for ``value`` under a heading of ``level`` (0: the top, no heading yet).

    Object keys open headings one level deeper until level 6; deeper keys become
    ``a.b.c: value`` lines relative to the last heading (``path``).
    """
    if isinstance(value, dict):
        # Plain values first: once a sub-heading opens, what follows belongs to it.
        members = sorted(value.items(), key=lambda kv: not _is_flat(kv[1]))
        for key, item in members:
            yield from _json_member(str(key), item, path, level)
    elif isinstance(value, list):
        if all(_is_scalar(item) for item in value):
            label = ".".join(path)
            for item in value:
                yield f"- {label}: {_scalar(item)}" if label else f"- {_scalar(item)}"
            return
        for index, item in enumerate(value, start=1):
            yield from _json_member(_item_label(path, index, item), item, [], level)
    else:
        label = ".".join(path)
        yield f"{label}: {_scalar(value)}" if label else _scalar(value)


def _json_member(key: str, item: object, path: list[str], level: int) -> Iterator[str]:
    if _is_flat(item):
        yield from _json_lines(item, [*path, key], level)
    elif level < JSON_MAX_HEADING_LEVEL and not path:
        yield ""
        yield "#" * (level + 1) + " " + _one_line(key)
        yield ""
        if isinstance(item, list):  # one section per item, labelled after the key
            for index, element in enumerate(item, start=1):
                label = _item_label([key], index, element)
                yield from _json_member(label, element, [], level + 1)
        else:
            yield from _json_lines(item, [], level + 1)
    else:
        yield from _json_lines(item, [*path, key], level)


def _item_label(path: list[str], index: int, item: object) -> str:
    parent = ".".join(path) or "item"
    label = f"{parent} {index}"
    if isinstance(item, dict):
        for key in _TITLE_KEYS:
            if _is_scalar(item.get(key)) and item.get(key) not in (None, ""):
                return f"{label}: {_one_line(_scalar(item[key]))}"
    return label
