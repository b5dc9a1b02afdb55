"""Every supported format becomes clean Markdown; every bad file a readable ExtractionError."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest

from enclave.knowledge.document import ExtractedDocument
from enclave.knowledge.extract import ExtractionError, detect_format, extract
from enclave.testing.documents import (
    pdf_bytes,
    write_corrupt_pdf,
    write_docx,
    write_encrypted_pdf,
    write_html,
    write_pdf,
    write_zip_bomb_docx,
)


def read(path: Path, **kwargs: object) -> ExtractedDocument:
    document = extract(path, name=kwargs.pop("name", path.name), **kwargs)  # type: ignore[arg-type]
    markdown = document.markdown
    assert markdown.strip()
    assert "\n\n\n" not in markdown, "runs of blank lines must be collapsed"
    assert all(line == line.rstrip() for line in markdown.split("\n")), "trailing spaces"
    return document


def refusal(path: Path, **kwargs: object) -> str:
    with pytest.raises(ExtractionError) as caught:
        extract(path, name=kwargs.pop("name", path.name), **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def page_of(document: ExtractedDocument, needle: str) -> int:
    offset = document.markdown.index(needle)
    (span,) = [s for s in document.pages if s.start <= offset < s.end]
    return span.number


# --------------------------------------------------------------------- PDF
def test_pdf_text_maps_back_to_its_pages(tmp_path: Path) -> None:
    pages = [
        "Apollo opens the report on page one.",
        ["Borealis is a paragraph on page two.", "Cassini follows on page two as well."],
        "Dorado closes the report on page three.",
    ]
    document = read(write_pdf(tmp_path / "report.pdf", pages, title="Annual Report"))

    assert document.format == "pdf"
    assert document.title == "Annual Report"
    assert [span.number for span in document.pages] == [1, 2, 3]
    assert page_of(document, "Apollo") == 1
    assert page_of(document, "Borealis") == 2
    assert page_of(document, "Cassini") == 2
    assert page_of(document, "Dorado") == 3
    # The spans are exact: each page's text, separated by one blank line.
    texts = [document.markdown[s.start : s.end] for s in document.pages]
    assert texts[0] == "Apollo opens the report on page one."
    assert "\n\n".join(texts) == document.markdown


def test_pdf_keeps_real_page_numbers_around_an_empty_page(tmp_path: Path) -> None:
    document = read(write_pdf(tmp_path / "gap.pdf", ["first words", "", "third words"]))
    assert [span.number for span in document.pages] == [1, 3]
    assert page_of(document, "third") == 3


def test_pdf_escapes_and_long_lines_survive(tmp_path: Path) -> None:
    text = "Parens (like these) and a back\\slash. " + "wrapped words " * 40
    document = read(write_pdf(tmp_path / "esc.pdf", [text]))
    assert "Parens (like these) and a back\\slash." in document.markdown
    assert document.markdown.count("wrapped") == 40


def test_pdf_without_text_is_refused_as_scanned(tmp_path: Path) -> None:
    message = refusal(write_pdf(tmp_path / "scan.pdf", ["", ""]))
    assert message == "no text found (a scanned PDF? OCR is not supported)"


def test_pdf_that_needs_a_password_is_refused(tmp_path: Path) -> None:
    path = write_encrypted_pdf(tmp_path / "locked.pdf", "Top secret words", password="secret")
    assert refusal(path) == "encrypted PDF: a password is needed to read it"


def test_pdf_encrypted_with_an_empty_password_is_read(tmp_path: Path) -> None:
    path = write_encrypted_pdf(tmp_path / "perm.pdf", "Permission only words", password="")
    document = read(path)
    assert "Permission only words" in document.markdown
    assert [span.number for span in document.pages] == [1]


def test_corrupt_pdf_is_refused(tmp_path: Path) -> None:
    assert refusal(write_corrupt_pdf(tmp_path / "bad.pdf")).startswith("corrupt PDF: ")


def test_truncated_pdfs_never_escape_as_tracebacks(tmp_path: Path) -> None:
    data = pdf_bytes(["one two three", "four five six"], title="t")
    path = tmp_path / "cut.pdf"
    for cut in range(8, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        try:
            extract(path, name="cut.pdf")
        except ExtractionError as exc:
            assert str(exc)


# -------------------------------------------------------------------- DOCX
DOCX_BLOCKS = [
    ("heading", (1, "Introduction")),
    ("paragraph", "The opening paragraph."),
    ("list", ["first item", "second item"]),
    ("heading", (2, "Figures")),
    ("table", [["Region", "Sales"], ["North", "10 | 12"], ["South", "7"]]),
    ("paragraph", "Text after the table."),
    ("heading", (3, "Details")),
]


def test_docx_keeps_headings_lists_and_tables_in_order(tmp_path: Path) -> None:
    document = read(write_docx(tmp_path / "plan.docx", DOCX_BLOCKS, title="The Plan"))
    markdown = document.markdown

    assert document.format == "docx"
    assert document.title == "The Plan"
    assert "# Introduction" in markdown.split("\n")
    assert "## Figures" in markdown.split("\n")
    assert "### Details" in markdown.split("\n")
    assert "- first item\n- second item" in markdown
    assert "| Region | Sales |\n|---|---|\n| North | 10 \\| 12 |\n| South | 7 |" in markdown
    order = ["# Introduction", "- first item", "## Figures", "| Region", "Text after", "### Det"]
    positions = [markdown.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_docx_title_falls_back_to_the_title_style(tmp_path: Path) -> None:
    blocks = [("title", "Styled Title"), ("paragraph", "Body text.")]
    document = read(write_docx(tmp_path / "t.docx", blocks))
    assert document.title == "Styled Title"
    assert document.markdown.startswith("# Styled Title")


def test_zip_bomb_docx_is_refused_without_expanding(tmp_path: Path) -> None:
    path = write_zip_bomb_docx(tmp_path / "bomb.docx")  # 300 MiB of zeros in ~300 KiB
    assert path.stat().st_size < 2 * 2**20
    started = time.perf_counter()
    message = refusal(path)
    elapsed = time.perf_counter() - started
    assert message == "refused DOCX: it would expand to 300 MB (a zip bomb?)"
    assert elapsed < 0.5, f"took {elapsed:.2f}s: it must not inflate the bomb"


def test_docx_entry_with_a_bomb_ratio_is_refused_below_the_size_cap(tmp_path: Path) -> None:
    path = write_zip_bomb_docx(tmp_path / "small-bomb.docx", expanded_mib=20)
    message = refusal(path)
    assert message.startswith("refused DOCX: word/document.xml would expand ")
    assert message.endswith(":1 (a zip bomb?)")


def test_docx_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
        for i in range(10_001):
            archive.writestr(f"junk/{i}", "")
    assert refusal(path) == "refused DOCX: it has 10002 files inside (a zip bomb?)"


def test_docx_that_is_not_a_zip_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "fake.docx"
    path.write_text("not a zip at all")
    assert refusal(path).startswith("corrupt DOCX: ")


def test_docx_with_a_broken_part_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "broken.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types")
        archive.writestr("word/document.xml", "<w:document")
    assert refusal(path).startswith("corrupt DOCX: ")


# -------------------------------------------------------------------- HTML
HOSTILE = (
    "<h1 onclick=\"alert('ONCLICK-HANDLER')\">Install Guide</h1>"
    "<p onmouseover=\"steal('HOVER-HANDLER')\">Download the package first.</p>"
    "<script>document.write('SCRIPT-IN-BODY')</script>"
    "<h2>Configure</h2><p>Edit the file <noscript>NOSCRIPT</noscript>then restart.</p>"
    "<ul><li>step one</li><li>step two</li></ul>"
    "<style>.hidden { content: 'STYLE-IN-BODY' }</style>"
)
FORBIDDEN = ("SCRIPT-IN-HEAD", "SCRIPT-IN-BODY", "STYLE-IN-BODY", "HANDLER", "alert", "NOSCRIPT")


def test_short_html_keeps_headings_and_drops_scripts(tmp_path: Path) -> None:
    document = read(write_html(tmp_path / "guide.html", "Guide Page", HOSTILE))
    lines = document.markdown.split("\n")

    assert document.format == "html"
    assert document.title == "Guide Page"
    assert "# Install Guide" in lines
    assert "## Configure" in lines
    assert "- step one" in lines
    assert "Download the package first." in document.markdown
    for needle in FORBIDDEN:
        assert needle not in document.markdown


def test_long_html_article_keeps_headings_and_drops_scripts(tmp_path: Path) -> None:
    sections = "".join(
        f"<h2>Chapter {i}</h2><p onclick=\"x('HANDLER')\">"
        + f"Chapter {i} explains the product in plain words. " * 6
        + "<script>var s = 'SCRIPT-IN-BODY';</script></p>"
        for i in range(1, 5)
    )
    body = f"<nav>Home | About</nav><article><h1>Handbook</h1>{sections}</article>"
    document = read(write_html(tmp_path / "handbook.html", "Handbook", body))
    lines = document.markdown.split("\n")
    assert "# Handbook" in lines
    assert [line for line in lines if line.startswith("## ")] == [
        f"## Chapter {i}" for i in range(1, 5)
    ]
    for needle in FORBIDDEN:
        assert needle not in document.markdown


def test_html_table_becomes_a_markdown_table(tmp_path: Path) -> None:
    body = "<table><tr><th>Name</th><th>Role</th></tr><tr><td>Ada</td><td>Eng</td></tr></table>"
    document = read(write_html(tmp_path / "t.html", "T", body))
    assert "| Name | Role |\n|---|---|\n| Ada | Eng |" in document.markdown


def test_html_without_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    path.write_text("<html><head><title>t</title><script>x()</script></head><body></body></html>")
    assert refusal(path) == "no text found"


# -------------------------------------------------------- Markdown and text
def test_markdown_is_kept_with_its_first_heading_as_title(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes(
        "\ufeff```\n# a comment in code\n```\n# Real Title  \n\n\n\nBody text.   \n".encode()
    )
    document = read(path)
    assert document.format == "markdown"
    assert document.title == "Real Title"
    assert document.markdown == "```\n# a comment in code\n```\n# Real Title\n\nBody text."


def test_text_is_kept_as_is(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\r\n\r\n\r\nSecond paragraph.\n")
    document = read(path)
    assert document.format == "text"
    assert document.title is None
    assert document.markdown == "First paragraph\nstill first.\n\nSecond paragraph."


def test_invalid_utf8_is_replaced_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    assert read(path).markdown == "caf\ufffd au lait"


# --------------------------------------------------------------------- CSV
def test_small_csv_is_one_table(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text('name,city\nAda,"London, UK"\nLin,Oslo\n')
    document = read(path)
    assert document.format == "csv"
    assert document.markdown == "| name | city |\n|---|---|\n| Ada | London, UK |\n| Lin | Oslo |"


def test_big_csv_repeats_the_header_in_every_group(tmp_path: Path) -> None:
    path = tmp_path / "sales.csv"
    rows = "".join(f"r{i};{i};a|b\n" for i in range(1, 121))
    path.write_text("region;units;note\n" + rows)
    markdown = read(path).markdown

    sections = markdown.split("## Rows ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == ["1\u201350", "51\u2013100", "101\u2013120"]
    for section in sections:
        assert "| region | units | note |" in section
    assert "| r120 | 120 | a\\|b |" in sections[-1]
    assert len(re.findall(r"^\| r\d+ \|", markdown, re.MULTILINE)) == 120


# -------------------------------------------------------------------- JSON
def test_json_keys_become_headings_and_lines(tmp_path: Path) -> None:
    data = {
        "name": "Widget",
        "spec": {"size": {"w": 1, "h": 2}, "tags": ["red", "blue"], "ok": True},
        "parts": [{"name": "bolt", "count": 4}, {"name": "nut", "count": None}],
        "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": "bottom"}}}}}}},
    }
    path = tmp_path / "widget.json"
    path.write_text(json.dumps(data))
    markdown = read(path).markdown
    lines = markdown.split("\n")

    assert "name: Widget" in lines
    assert "# spec" in lines and "## size" in lines
    assert "w: 1" in lines and "ok: true" in lines
    assert "- tags: red" in lines
    # Plain values stay above sub-headings, so they are not read as part of them.
    assert markdown.index("ok: true") < markdown.index("## size")
    assert "## parts 1: bolt" in lines and "## parts 2: nut" in lines
    assert "count: null" in lines
    assert "###### e" in lines and "f.g: bottom" in lines


def test_invalid_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,\n "b": }')
    assert refusal(path) == "invalid JSON: line 2 column 7: Expecting value"


# ----------------------------------------------------------- size and format
def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * (3 * 2**20))
    assert refusal(path, max_bytes=2 * 2**20) == "too large: 3 MB (limit 2 MB)"


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.touch()
    assert refusal(path) == "empty document"


def test_unsupported_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "setup.exe"
    path.write_bytes(b"MZ\x90\x00\x03")
    assert refusal(path) == (
        "unsupported format: .exe (supported: PDF, DOCX, HTML, Markdown, text, CSV, JSON)"
    )


def test_a_zip_that_is_not_word_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "sheet.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert refusal(path).startswith("unsupported format: .xlsx")


def test_missing_file_is_an_extraction_error(tmp_path: Path) -> None:
    assert refusal(tmp_path / "gone.txt").startswith("cannot read the file: ")


@pytest.mark.parametrize(
    ("name", "media_type", "head", "expected"),
    [
        ("upload.bin", None, b"%PDF-1.7\n", "pdf"),  # magic beats the extension
        ("report.txt", None, b"%PDF-1.4\n", "pdf"),
        ("doc", None, b"PK\x03\x04....word/document.xml", "docx"),
        ("page.HTM", None, b"<p>", "html"),
        ("example.org", "text/html; charset=utf-8", b"<html>", "html"),  # ".org" is no format
        ("example.org/api", "application/ld+json", b"{}", "json"),
        ("data.tsv", None, b"a\tb", "csv"),
        ("README", None, b"plain words", "text"),
        ("index", None, b"  <!DOCTYPE html><html>", "html"),
    ],
)
def test_detect_format(name: str, media_type: str | None, head: bytes, expected: str) -> None:
    assert detect_format(name, media_type, head) == expected


def test_detect_format_refuses_unknown_binary() -> None:
    with pytest.raises(ExtractionError, match="unsupported format"):
        detect_format("blob", None, b"\x00\x01\x02\xff")
