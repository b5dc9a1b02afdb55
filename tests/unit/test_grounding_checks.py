"""Grounding decided in code: claim-level citations, answerability, extracts,
disagreement for any answer type and clarifying questions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.knowledge.citations import MARKER, verify
from enclave.knowledge.clarify import find_ambiguity
from enclave.knowledge.conflicts import compatible, find_disagreement
from enclave.knowledge.extractive import Candidate, answerable, choose, extractive_text, rank
from enclave.knowledge.facts import Evidence, dates, facts, names, numbers, supports
from enclave.knowledge.grounding import coverage_text, json_strings
from enclave.knowledge.prompt_markup import MarkupStripper, strip_prompt_markup
from enclave.knowledge.questions import answer_type, intent, stem
from enclave.knowledge.retrieval import Retrieved
from enclave.knowledge.service import Passage
from enclave.knowledge.store.base import ChunkRow
from enclave.knowledge.text import content_words, sentence_spans


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


async def bag_of_words(texts: Sequence[str]) -> np.ndarray:
    """A stand-in embedding for tests: hashed content words, unit length."""
    vectors = np.zeros((len(texts), 256), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in content_words(text):
            bucket = int(hashlib.sha1(stem(word).encode()).hexdigest(), 16) % 256
            vectors[row, bucket] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def ranked(question: str, passages: Sequence[Passage]) -> list[Candidate]:
    return asyncio.run(rank(intent(question), passages, bag_of_words))


LEAVE = passage(
    "Parental leave. Employees receive 480 days of parental leave per child. "
    "The leave can be shared between parents.",
    1,
    "leave.md",
)
BIKES = passage("Bicycles must be parked in the basement racks overnight.", 2, "bikes.md")
CONTAINERS = passage(
    "To stop the containers on the cluster, run docker compose down. "
    "The cluster is hosted by Hetzner in Falkenstein.",
    3,
    "ops.md",
)


# -- checkable content ----------------------------------------------------------


def test_numbers_dates_and_names_are_normalised() -> None:
    assert numbers("a hundred nodes, 26 percent, 1.5 million, 1,200 staff, twenty-five") >= {
        "100",
        "26%",
        "1500000",
        "1200",
        "25",
    }
    assert "1000000" not in numbers("1.5 million")
    assert "26%" in numbers("26%") and "26%" in numbers("26 per cent")
    assert dates("on 12 March 1998, in June 2001 and in 1987") == {
        "1998-03-12",
        "2001-06",
        "1987",
    }
    # "Then" and "CHAIRMAN" start sentences: grammar, not names.
    assert names("Then Annie Ernaux's book won. CHAIRMAN GREENSPAN spoke.") == {
        "annie",
        "ernaux",
        "greenspan",
    }


def test_a_fabricated_number_is_not_supported_by_a_passage_on_the_topic() -> None:
    claim = facts("The cluster contains 12 GPUs.", question="How many GPUs does the cluster have?")
    assert claim.numbers == {"12"}
    assert not supports(claim, Evidence.of(CONTAINERS.chunk.text))
    assert supports(facts("The cluster has 12 GPUs."), Evidence.of("Our cluster has twelve GPUs."))


def test_a_different_name_is_not_supported() -> None:
    evidence = Evidence.of(CONTAINERS.chunk.text)
    assert supports(facts("It is hosted by Hetzner."), evidence)
    assert supports(facts("It is hosted by HETZNER's data centre."), evidence)
    assert not supports(facts("It is hosted by Scaleway."), evidence)


# -- citations, claim by claim --------------------------------------------------


def test_a_fabricated_number_with_a_citation_is_removed() -> None:
    """The bug: "The cluster contains 12 GPUs. [1]" with [1] about stopping containers."""
    result = verify(
        "The cluster contains 12 GPUs. [1] To stop the containers, run docker compose down [1].",
        [CONTAINERS],
        question="How many GPUs does the cluster have?",
    )
    assert "12" not in result.text
    assert result.unsupported == ["The cluster contains 12 GPUs."]
    assert result.text == "To stop the containers, run docker compose down [1]."
    assert [c.number for c in result.citations] == [1]


def test_flag_keeps_the_sentence_without_a_citation() -> None:
    result = verify("The cluster contains 12 GPUs [1].", [CONTAINERS], policy="flag")
    assert result.text == "The cluster contains 12 GPUs."
    assert result.citations == [] and result.supported == 0
    assert result.unsupported == ["The cluster contains 12 GPUs."]


def test_a_marker_moves_to_the_passage_that_holds_the_claim() -> None:
    result = verify(
        "Employees receive 480 days of parental leave [7]. Bicycles go in basement racks [1].",
        [LEAVE, BIKES],
    )
    assert result.text == (
        "Employees receive 480 days of parental leave [1]. Bicycles go in basement racks [2]."
    )
    assert {c.number: c.match for c in result.citations} == {1: "overlap", 2: "overlap"}
    [quote] = [c.quote for c in result.citations if c.number == 1]
    assert quote == "Employees receive 480 days of parental leave per child."


def test_a_sentence_with_nothing_to_check_stays_uncited() -> None:
    result = verify("Yes.", [LEAVE, BIKES])
    assert result.text == "Yes." and result.citations == [] and result.supported == 0


def test_annotations_point_at_the_cited_sentence() -> None:
    result = verify("Employees receive 480 days of parental leave [1]. Yes.", [LEAVE])
    [annotation] = result.annotations()
    span = annotation["url_citation"]
    assert annotation["type"] == "url_citation"
    assert result.text[span["start_index"] : span["end_index"]] == (
        "Employees receive 480 days of parental leave"
    )
    assert span["url"] == "kb://kb/leave.md#chunk-10"


def test_a_quote_is_never_a_bare_heading() -> None:
    chunk = passage(
        "# Annual leave\n\nEmployees get 25 days of annual leave per year.\n\n"
        "## Parental leave\nParents get 480 days per child.",
        1,
        "handbook.md",
    )
    result = verify("You get 25 days of annual leave [1].", [chunk])
    assert result.citations[0].quote == "Employees get 25 days of annual leave per year."
    result = verify("Parental leave is 480 days [1].", [chunk])
    assert result.citations[0].quote == "Parents get 480 days per child."


def test_a_json_answer_is_read_for_citations_but_never_rewritten() -> None:
    answer = orjson.dumps({"days": "Employees receive 480 days of parental leave"}).decode()
    result = verify(json_strings(answer), [LEAVE], rewrite=False)
    assert [c.number for c in result.citations] == [1]
    assert "[" not in answer


PASSAGE_FACTS = [LEAVE, BIKES, CONTAINERS]


@settings(max_examples=200, deadline=None)
@given(
    sentences=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Employees receive {n} days of parental leave",
                    "The cluster is hosted by {name}",
                    "Bicycles are parked in {n} racks",
                    "The leave can be shared between {name} and parents",
                ]
            ),
            st.integers(0, 999),
            st.sampled_from(["Hetzner", "Scaleway", "Annie Ernaux", "OVH"]),
            st.lists(st.integers(1, 4), max_size=2),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_no_citation_is_ever_attached_to_a_claim_its_passage_does_not_hold(
    sentences: list[tuple[str, int, str, list[int]]],
) -> None:
    """Property: after verification every cited sentence's numbers, dates, names and
    rare words are in every passage it cites, whatever the model wrote."""
    answer = " ".join(
        template.format(n=n, name=name) + "".join(f" [{m}]" for m in markers) + "."
        for template, n, name, markers in sentences
    )
    result = verify(answer, PASSAGE_FACTS)
    for start, end in sentence_spans(result.text):
        sentence = result.text[start:end]
        cited = [int(n) for m in MARKER.finditer(sentence) for n in m.group(1).split(",")]
        claim = facts(MARKER.sub("", sentence))
        for number in cited:
            assert 1 <= number <= len(PASSAGE_FACTS)
            assert supports(claim, Evidence.of(PASSAGE_FACTS[number - 1].chunk.text)), sentence
    for sentence in result.unsupported:  # removed, not just uncited
        assert sentence not in result.text


# -- questions and extractive answers -------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How many GPUs does the cluster have?", "number"),
        ("What was the federal funds rate in March?", "number"),
        ("When was the bridge opened?", "date"),
        ("In what year did the hearings start?", "date"),
        ("Who chaired the committee?", "person"),
        ("Which company hosts the cluster?", "organisation"),
        ("Where is the fair held?", "place"),
        ("Did North shred the documents?", "yesno"),
        ("What did Hall type the number onto?", "open"),
    ],
)
def test_the_expected_answer_type(question: str, expected: str) -> None:
    assert answer_type(question) == expected


def test_an_extractive_answer_quotes_the_sentence_that_answers() -> None:
    question = intent("How many days of parental leave do employees get?")
    found = ranked(question.text, [BIKES, LEAVE])
    chosen = choose(question, found)
    assert chosen and chosen[0].text == "Employees receive 480 days of parental leave per child."
    text = extractive_text(chosen)
    assert text.startswith("Employees receive 480 days of parental leave per child. [2]")


def test_a_near_miss_is_not_answerable_and_says_what_the_sources_cover() -> None:
    """The cluster is in the sources; how many GPUs it has is not."""
    question = intent("How many GPUs does the cluster have?")
    found = ranked(question.text, [CONTAINERS])
    assert not answerable(question, found)
    text, covered = coverage_text(question, [CONTAINERS])
    assert covered == ["cluster"]
    assert (
        text == "The sources mention cluster but not GPUs, so they cannot say how many or how much."
    )
    # The same sources do answer where it is hosted.
    assert answerable(
        intent("Which company hosts the cluster?"),
        ranked("Which company hosts the cluster?", [CONTAINERS]),
    )


# -- disagreement for any answer type -------------------------------------------


def disagreement(question: str, passages: Sequence[Passage]):  # type: ignore[no-untyped-def]
    return find_disagreement(intent(question), ranked(question, passages))


def test_a_person_name_contradiction_is_found_and_equal_names_cluster() -> None:
    a = passage("The 2022 Nobel Prize in Literature went to Annie Ernaux.", 1, "nobel.md")
    b = passage("The 2022 Nobel Prize in Literature was awarded to Ernaux.", 2, "press.md")
    c = passage("The 2022 Nobel Prize in Literature went to Jon Fosse.", 3, "wrong.md")
    assert disagreement("Who won the 2022 Nobel Prize in Literature?", [a, b]) is None
    found = disagreement("Who won the 2022 Nobel Prize in Literature?", [a, b, c])
    assert found is not None and found.kind == "person"
    assert [x.passage.document_name for x in found.supporting] == ["nobel.md", "press.md"]
    assert [x.passage.document_name for x in found.contradicting] == ["wrong.md"]
    assert found.contradicting[0].values == ("jon fosse",)


def test_dates_numbers_places_organisations_and_yes_no_disagree() -> None:
    cases = [
        (
            "When was the Öresund Bridge opened?",
            "The Öresund Bridge was opened on 1 July 2000.",
            "The Öresund Bridge was opened in 2001.",
            "date",
        ),
        (
            "How many days of parental leave do employees get?",
            "Employees get 480 days of parental leave.",
            "Employees get 390 days of parental leave.",
            "number",
        ),
        (
            "Where is the Midsummer Fair held?",
            "The Midsummer Fair is held in Uppsala.",
            "The Midsummer Fair is held in Lund.",
            "place",
        ),
        (
            "Which company hosts the cluster?",
            "The cluster is hosted by Hetzner Online GmbH.",
            "The cluster is hosted by Scaleway SA.",
            "organisation",
        ),
        (
            "Did the committee approve the budget?",
            "The committee approved the budget.",
            "The committee did not approve the budget.",
            "yesno",
        ),
    ]
    for question, ours, theirs, kind in cases:
        found = disagreement(question, [passage(ours, 1, "a.md"), passage(theirs, 2, "b.md")])
        assert found is not None and found.kind == kind, question


def test_agreeing_or_off_topic_passages_do_not_disagree() -> None:
    question = "When was the Öresund Bridge opened?"
    a = passage("The Öresund Bridge was opened to traffic on 1 July 2000.", 1, "a.md")
    agrees = passage("Traffic first crossed when the Öresund Bridge was opened in July 2000.", 2)
    other = passage("The city library was opened in 1987.", 3, "library.md")
    same_doc = passage("The Öresund Bridge was opened to traffic in 2001.", 1, "a.md")
    assert disagreement(question, [a, agrees]) is None
    assert disagreement(question, [a, other]) is None
    assert disagreement(question, [a, same_doc]) is None
    assert compatible("date", {"2000-07-01"}, {"2000"})
    assert not compatible("date", {"2000-07-01"}, {"2001"})


def test_different_quantities_of_the_same_unit_do_not_disagree() -> None:
    annual = passage("Employees get 25 days of annual leave per year.", 2, "annual.md")
    assert (
        disagreement("How many days of parental leave do employees get?", [LEAVE, annual]) is None
    )


# -- clarifying questions -------------------------------------------------------


def test_a_daily_and_a_yearly_figure_ask_which_one() -> None:
    a = passage("The plant treats 2,000 cubic metres of water per day.", 1, "plant.md")
    b = passage("The plant treats 700,000 cubic metres of water a year.", 2, "report.md")
    question = intent("How much water does the plant treat?")
    found = find_ambiguity(question, ranked(question.text, [a, b]))
    assert found is not None and found.kind == "period"
    assert [option.label for option in found.options] == ["daily", "yearly"]
    assert "daily" in found.question and "yearly" in found.question
    assert found.as_dict()["options"][0]["quote"] == a.chunk.text
    # A question that says which period is not ambiguous.
    daily = intent("How much water does the plant treat per day?")
    assert find_ambiguity(daily, ranked(daily.text, [a, b])) is None


def test_two_people_of_one_name_ask_which_one() -> None:
    a = passage("John Smith chaired the audit committee in 2019.", 1, "a.md")
    b = passage("Mary Smith chaired the audit committee in 2021.", 2, "b.md")
    question = intent("When did Smith chair the audit committee?")
    found = find_ambiguity(question, ranked(question.text, [a, b]))
    assert found is not None and found.kind == "entity"
    assert [option.label for option in found.options] == ["John Smith", "Mary Smith"]


# -- the prompt's markup --------------------------------------------------------


def test_the_prompts_markup_and_markers_for_missing_passages_are_stripped() -> None:
    raw = '<source id="1" from="leave.md">Leave is 480 days [1][2]. </source>Shared [2, 1].'
    assert strip_prompt_markup(raw, 1) == "Leave is 480 days [1]. Shared [1]."
    assert strip_prompt_markup("Keep [1] and [2].", 2) == "Keep [1] and [2]."
    stripper = MarkupStripper(1)
    pieces = ["Hello <so", 'urce id="1" from', '="x">Leave', " is 480 [", "2] days [1", "]. a < b"]
    pieces += ["</sour", "ce>"]
    out = "".join(stripper.feed(piece) for piece in pieces) + stripper.flush()
    assert out == "Hello Leave is 480 days [1]. a < b"


def test_a_question_that_names_the_period_gets_that_figure_and_no_disagreement() -> None:
    """The follow-up to "daily or yearly?": "(daily)" picks the daily sentence; the two
    figures are for different periods, so they do not disagree."""
    a = passage("The plant treats 2,000 cubic metres of water per day.", 1, "plant.md")
    b = passage("The plant treats 700,000 cubic metres of water a year.", 2, "report.md")
    question = intent("How much water does the plant treat? (daily)")
    found = ranked(question.text, [a, b])
    assert find_ambiguity(question, found) is None
    assert find_disagreement(question, found) is None
    assert [c.text for c in choose(question, found)] == [a.chunk.text]


def test_markers_after_the_full_stop_belong_to_the_sentence_before() -> None:
    text = 'Leave is 480 days. [1] Pay is 80%. [2]\n\n- [1] leave.md: "quote"'
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Leave is 480 days. [1]",
        "Pay is 80%. [2]",
        '- [1] leave.md: "quote"',
    ]


def test_annotations_of_an_extract_and_of_a_list_line_cover_their_text() -> None:
    extract = extractive_text(
        choose(
            intent("How many days of parental leave per child?"),
            ranked("How many days of parental leave per child?", [LEAVE]),
        )
    )
    result = verify(extract, [LEAVE], rewrite=False)
    spans = [a["url_citation"] for a in result.annotations()]
    assert spans and all(s["end_index"] > s["start_index"] for s in spans)
    assert extract[spans[0]["start_index"] : spans[0]["end_index"]].startswith("Employees receive")


def test_a_number_about_something_else_does_not_answer() -> None:
    """ "How many pages long was the chronology?" over a passage with other numbers about
    the chronology: a near miss, not "18"."""
    chronology = passage(
        "North spent a week on the chronology of the 18 HAWK missiles, in 5 versions.", 1
    )
    question = intent("How many pages long was the chronology?")
    assert question.measured == {"page"}
    assert not answerable(question, ranked(question.text, [chronology]))
    pages = passage("The chronology of the HAWK shipment ran to 12 pages.", 2, "pages.md")
    assert answerable(question, ranked(question.text, [chronology, pages]))


def test_a_document_does_not_disagree_with_itself() -> None:
    a = passage("The Öresund Bridge was opened to traffic on 1 July 2000.", 1, "bridge.md")
    b = passage("Some say the Öresund Bridge was opened to traffic in 2001.", 1, "bridge.md")
    assert disagreement("When was the Öresund Bridge opened?", [a, b]) is None


def test_a_year_question_needs_a_year() -> None:
    worked = passage("On November 21 Hall was working on the documents for Colonel North.", 1)
    question = intent("In what year did Hall start working for Colonel North?")
    assert not answerable(question, ranked(question.text, [worked]))
    started = passage("Hall started working for Colonel North in 1983.", 2, "b.md")
    assert answerable(question, ranked(question.text, [worked, started]))
