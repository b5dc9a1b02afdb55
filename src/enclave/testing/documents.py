"""Real document files for tests and benchmarks: PDFs, DOCX files and hostile ones.

The PDF writer is written by hand (a Helvetica Type1 font, one content stream
per page, a correct xref table) so tests need no PDF library to *make* a PDF;
only the encrypted variant borrows pypdf's writer, because encryption by hand
is not worth its bugs. ``write_zip_bomb_docx`` streams its zeros through
``zipfile`` in 1 MiB chunks, so building a large bomb stays small in memory.
"""

from __future__ import annotations

import io
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAGE_WIDTH, PAGE_HEIGHT = 612, 792  # US Letter, in points
MARGIN = 72
FONT_SIZE = 11
LEADING = 14
WRAP_COLUMNS = 90  # Helvetica 11 pt averages ~5.5 pt a character: 90 fit in 468 pt

CONTENT_TYPES_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/'
    'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
    "</Types>"
)


# ---------------------------------------------------------------------- PDF
def _pdf_string(text: str) -> bytes:
    """A PDF literal string: WinAnsi bytes with ``( ) \\`` escaped."""
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _page_lines(page: str | Sequence[str]) -> list[str]:
    paragraphs = [page] if isinstance(page, str) else list(page)
    lines: list[str] = []
    for i, paragraph in enumerate(paragraphs):
        if i:
            lines.append("")
        for line in paragraph.split("\n"):
            lines.extend(textwrap.wrap(line, WRAP_COLUMNS) or [""])
    return lines


def _content_stream(lines: list[str]) -> bytes:
    top = PAGE_HEIGHT - MARGIN
    ops = [b"BT", b"/F1 %d Tf" % FONT_SIZE, b"%d TL" % LEADING, b"%d %d Td" % (MARGIN, top)]
    for i, line in enumerate(lines):
        if i:
            ops.append(b"T*")
        if line:
            ops.append(_pdf_string(line) + b" Tj")
    ops.append(b"ET")
    return b"\n".join(ops)


def pdf_bytes(pages: Sequence[str] | Sequence[Sequence[str]], *, title: str | None = None) -> bytes:
    """A valid PDF with one page per item of ``pages`` (text, or a list of paragraphs)."""
    if not pages:
        raise ValueError("a PDF needs at least one page")
    # Objects 1..3 are fixed; each page then takes two numbers (page, contents).
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % n for n in page_ids), len(pages)),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for page_id, page in zip(page_ids, pages, strict=True):
        stream = _content_stream(_page_lines(page))
        objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, page_id + 1)
        )
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info_id = None
    if title is not None:
        info_id = 4 + 2 * len(pages)
        objects[info_id] = b"<< /Title " + _pdf_string(title) + b" >>"

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]  # every entry exactly 20 bytes
    trailer = b"<< /Size %d /Root 1 0 R" % size
    if info_id is not None:
        trailer += b" /Info %d 0 R" % info_id
    out += b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def write_pdf(
    path: Path, pages: Sequence[str] | Sequence[Sequence[str]], *, title: str | None = None
) -> Path:
    """Write a multi-page PDF whose text pypdf extracts back; returns ``path``."""
    path.write_bytes(pdf_bytes(pages, title=title))
    return path


def write_encrypted_pdf(path: Path, text: str, password: str = "secret") -> Path:
    """An RC4-128 encrypted one-page PDF (RC4 needs no crypto package in pypdf).

    ``password=""`` makes the common permission-only kind: anyone can open it,
    only the owner password (set here to something else) may change it.
    """
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes([text]))))
    writer.encrypt(user_password=password, owner_password=f"owner-{password}", algorithm="RC4-128")
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def write_corrupt_pdf(path: Path) -> Path:
    """A PDF header followed by garbage: no objects, no xref, no trailer."""
    garbage = bytes((i * 37 + 11) % 256 for i in range(4096))
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + garbage)
    return path


# --------------------------------------------------------------------- DOCX
Block = tuple[str, Any]
"""A DOCX block: ``("heading", (level, text))``, ``("title", text)``,
``("paragraph", text)``, ``("list", [items])`` or ``("table", [[cells], ...])``."""


def write_docx(path: Path, blocks: Sequence[Block], *, title: str | None = None) -> Path:
    """Write a DOCX from ``blocks`` (see :data:`Block`) with python-docx."""
    import docx

    document = docx.Document()
    if title is not None:
        document.core_properties.title = title
    for kind, value in blocks:
        if kind == "heading":
            level, text = value
            document.add_heading(str(text), level=int(level))
        elif kind == "title":
            document.add_heading(str(value), level=0)
        elif kind == "paragraph":
            document.add_paragraph(str(value))
        elif kind == "list":
            for item in value:
                document.add_paragraph(str(item), style="List Bullet")
        elif kind == "table":
            rows = [list(map(str, row)) for row in value]
            table = document.add_table(rows=len(rows), cols=max(len(r) for r in rows))
            for row, cells in zip(table.rows, rows, strict=True):
                for cell, text in zip(row.cells, cells, strict=False):
                    cell.text = text
        else:
            raise ValueError(f"unknown DOCX block kind: {kind!r}")
    document.save(str(path))
    return path


def write_zip_bomb_docx(path: Path, *, expanded_mib: int = 300) -> Path:
    """A ``.docx`` whose ``word/document.xml`` expands to ``expanded_mib`` MiB of zeros.

    Deflate squeezes zeros about 1000:1, so the default file is ~300 KiB on disk
    and takes ~1.5 s to build (1 GiB takes ~6 s, which is too slow for a unit test).
    """
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES_XML)
        with zf.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(expanded_mib):
                member.write(chunk)
    return path


# ------------------------------------------------------------- text formats
def write_html(path: Path, title: str, body: str) -> Path:
    """A small HTML page; ``body`` is inserted as-is, so tests can plant hostile markup."""
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<script>var leaked = 'SCRIPT-IN-HEAD';</script><style>body{{color:red}}</style>"
        f"</head><body>{body}</body></html>",
        encoding="utf-8",
    )
    return path
