"""Citations checked in code, and disagreement found without a model."""

from __future__ import annotations

from enclave.knowledge.citations import cite
from enclave.knowledge.conflicts import compatible, extract_values, find_disagreement
from enclave.knowledge.prompt_markup import MarkupStripper, strip_prompt_markup
from enclave.knowledge.retrieval import Retrieved
from enclave.knowledge.service import Passage
from enclave.knowledge.store.base import ChunkRow


def passage(text: str, document_id: int = 1, name: str = "doc.md", offset: int = 100) -> Passage:
    chunk = ChunkRow(
        kb_id=1,
        document_id=document_id,
        ordinal=0,
        text=text,
        char_start=offset,
        char_end=offset + len(text),
        id=document_id * 10,
    )
    return Passage(
        retrieved=Retrieved(chunk, 0.03, 0.6, 1, 2.0, 1, 0.6),
        knowledge_base="kb",
        document_id=document_id,
        document_name=name,
        document_title=None,
        classification="internal",
    )


LEAVE = passage(
    "Parental leave. Employees receive 480 days of parental leave per child. "
    "The leave can be shared between parents.",
    1,
    "leave.md",
)
BIKES = passage("Bicycles must be parked in the basement racks overnight.", 2, "bikes.md")


def test_a_supported_marker_is_kept_and_quotes_the_exact_passage() -> None:
    answer, citations = cite("Employees receive 480 days of parental leave [1].", [LEAVE, BIKES])
    assert answer == "Employees receive 480 days of parental leave [1]."
    [citation] = citations
    assert citation.number == 1 and citation.match == "marker"
    assert citation.quote == "Employees receive 480 days of parental leave per child."
    assert citation.quote in citation.passage.chunk.text
    chunk = citation.passage.chunk
    start = citation.quote_start - chunk.char_start
    assert chunk.text[start : start + len(citation.quote)] == citation.quote


def test_markers_that_point_nowhere_or_at_the_wrong_passage_are_removed() -> None:
    answer, citations = cite(
        "Employees receive 480 days of parental leave [7]. Bicycles go in basement racks [1].",
        [LEAVE, BIKES],
    )
    # [7] does not exist; [1] does not support the bicycle sentence. Both are replaced
    # by the passages that do support the sentences.
    assert "[7]" not in answer
    assert answer == (
        "Employees receive 480 days of parental leave [1]. Bicycles go in basement racks [2]."
    )
    assert {c.number: c.match for c in citations} == {1: "overlap", 2: "overlap"}


def test_an_uncited_supported_sentence_gets_a_marker() -> None:
    answer, citations = cite("Bicycles are parked in the basement racks overnight.", [LEAVE, BIKES])
    assert answer == "Bicycles are parked in the basement racks overnight [2]."
    assert [c.number for c in citations] == [2]


def test_an_answer_without_support_cites_the_top_passage() -> None:
    answer, citations = cite("Yes.", [LEAVE, BIKES])
    assert answer == "Yes. [1]"
    assert [(c.number, c.match) for c in citations] == [(1, "top_passage")]


def test_a_streamed_answer_is_not_rewritten() -> None:
    text = "Employees receive 480 days of parental leave [9]."
    answer, citations = cite(text, [LEAVE], rewrite=False)
    assert answer == text
    assert [c.number for c in citations] == [1]


def test_no_passages_means_no_citations() -> None:
    assert cite("Anything.", []) == ("Anything.", [])


# -- disagreement -------------------------------------------------------------

OPENED_2000 = passage("The Öresund Bridge was opened to traffic on 1 July 2000.", 1, "bridge-a.md")
OPENED_2001 = passage("The Öresund Bridge was opened to traffic in 2001.", 2, "bridge-b.md")
OPENED_AGREES = passage("Traffic first crossed: the Öresund Bridge was opened in July 2000.", 3)


def test_values_are_extracted_and_normalised() -> None:
    assert extract_values("It opened on 1 July 2000 and closed in 2004.", "date") == {
        "2000-07-01",
        "2004",
    }
    assert extract_values("It opened on July 1, 2000.", "date") == {"2000-07-01"}
    assert extract_values("The festival is held in Uppsala in June.", "place") == {"uppsala"}
    assert extract_values("Staff get 25 days of leave and 40% pay.", "amount") == {
        "25 day",
        "40 %",
    }
    assert compatible("date", {"2000-07-01"}, {"2000"})
    assert compatible("date", {"2000-07"}, {"2000-07-01"})
    assert not compatible("date", {"2000-07-01"}, {"2001"})


def test_two_documents_with_different_dates_disagree() -> None:
    found = find_disagreement(
        "When was the Öresund Bridge opened?", [OPENED_2000, OPENED_AGREES, OPENED_2001]
    )
    assert found is not None and found.kind == "date"
    assert [c.passage.document_name for c in found.supporting] == ["bridge-a.md", "doc.md"]
    assert [c.passage.document_name for c in found.contradicting] == ["bridge-b.md"]
    assert found.contradicting[0].values == ("2001",)
    body = found.as_dict()
    assert body["supporting"][0]["quote"] == OPENED_2000.chunk.text
    assert body["contradicting"][0]["document"]["name"] == "bridge-b.md"


def test_two_documents_with_different_places_disagree() -> None:
    a = passage("The annual Midsummer Fair is held in Uppsala.", 1, "fair-2024.md")
    b = passage("The annual Midsummer Fair is held in Lund.", 2, "fair-2025.md")
    found = find_disagreement("Where is the Midsummer Fair held?", [a, b])
    assert found is not None and found.kind == "place"
    assert found.supporting[0].values == ("uppsala",)
    assert found.contradicting[0].values == ("lund",)


def test_agreeing_or_off_topic_passages_do_not_disagree() -> None:
    assert (
        find_disagreement("When was the Öresund Bridge opened?", [OPENED_2000, OPENED_AGREES])
        is None
    )
    other = passage("The city library was opened in 1987.", 2, "library.md")
    assert find_disagreement("When was the Öresund Bridge opened?", [OPENED_2000, other]) is None
    same_doc = passage("The Öresund Bridge was opened to traffic in 2001.", 1, "bridge-a.md")
    assert find_disagreement("When was the Öresund Bridge opened?", [OPENED_2000, same_doc]) is None


def test_different_quantities_of_the_same_unit_do_not_disagree() -> None:
    annual = passage("Employees get 25 days of annual leave per year.", 2, "annual.md")
    found = find_disagreement("How many days of parental leave?", [LEAVE, annual])
    assert found is None
    other_parental = passage("Employees receive 390 days of parental leave.", 3, "old.md")
    found = find_disagreement("How many days of parental leave?", [LEAVE, annual, other_parental])
    assert found is not None and found.kind == "amount"
    assert [c.passage.document_name for c in found.contradicting] == ["old.md"]


def test_a_quote_is_never_a_bare_heading() -> None:
    chunk = passage(
        "# Annual leave\n\nEmployees get 25 days of annual leave per year.\n\n"
        "## Parental leave\nParents get 480 days per child.",
        1,
        "handbook.md",
    )
    _, citations = cite("You get 25 days of annual leave [1].", [chunk])
    assert citations[0].quote == "Employees get 25 days of annual leave per year."
    _, citations = cite("Parental leave is 480 days [1].", [chunk])
    assert citations[0].quote == "Parents get 480 days per child."
    assert not any(c.quote.lstrip().startswith("#") for c in citations)


def test_the_prompts_markup_and_markers_for_missing_passages_are_stripped() -> None:
    raw = '<source id="1" from="leave.md">Leave is 480 days [1][2]. </source>Shared [2, 1].'
    assert strip_prompt_markup(raw, 1) == "Leave is 480 days [1]. Shared [1]."
    assert strip_prompt_markup("Keep [1] and [2].", 2) == "Keep [1] and [2]."
    stripper = MarkupStripper(1)
    pieces = ["Hello <so", 'urce id="1" from', '="x">Leave', " is 480 [", "2] days [1", "]. a < b"]
    pieces += ["</sour", "ce>"]
    out = "".join(stripper.feed(piece) for piece in pieces) + stripper.flush()
    assert out == "Hello Leave is 480 days [1]. a < b"
