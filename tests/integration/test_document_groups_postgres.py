"""Documents restricted to groups on Postgres with pgvector: the unit tests' checks, run on
``PostgresStore`` (the groups filter inside pgvector's iterative HNSW scan and the
``tsvector`` query)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import fresh_database
from tests.unit.test_document_groups import (
    PROP_DOCUMENTS,
    PROP_GROUPS,
    Base,
    check_groups_property,
    live_base,
)
from tests.unit.test_document_groups import (
    test_a_base_counts_only_the_documents_each_person_may_see as counts,
)
from tests.unit.test_document_groups import (
    test_a_builder_outside_the_groups_cannot_lift_the_restriction as outsider_builder,
)
from tests.unit.test_document_groups import (
    test_outside_the_group_no_path_reaches_the_restricted_document as outside_the_group,
)
from tests.unit.test_document_groups import (
    test_the_hr_partner_gets_the_salary_cited_and_a_colleague_does_not as two_people,
)
from tests.unit.test_knowledge_api import knowledge_settings


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, postgres_uri: str) -> Iterator[Base]:
    settings = knowledge_settings(tmp_path_factory.mktemp("document-groups-postgres"))
    url = fresh_database(postgres_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    settings.database_url = url
    yield from live_base(settings)


def test_the_store_is_postgres(base: Base) -> None:
    assert type(base.services.knowledge.store).__name__ == "PostgresStore"


@pytest.mark.parametrize("style", ["generative", "extractive"])
def test_the_hr_partner_gets_the_salary_cited_and_a_colleague_does_not(
    base: Base, style: str
) -> None:
    two_people(base, style)


def test_outside_the_group_no_path_reaches_the_restricted_document(base: Base) -> None:
    outside_the_group(base)


def test_a_builder_outside_the_groups_cannot_lift_the_restriction(base: Base) -> None:
    outsider_builder(base)


def test_a_base_counts_only_the_documents_each_person_may_see(base: Base) -> None:
    counts(base)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    restricted=st.lists(
        st.frozensets(st.sampled_from(PROP_GROUPS)),
        min_size=PROP_DOCUMENTS,
        max_size=PROP_DOCUMENTS,
    ),
    groups=st.frozensets(st.sampled_from([*PROP_GROUPS, "z"])),
    top_k=st.integers(1, PROP_DOCUMENTS),
)
def test_every_path_returns_only_readable_passages_and_loses_no_place(
    base: Base, restricted: list[frozenset[str]], groups: frozenset[str], top_k: int
) -> None:
    check_groups_property(base, restricted, groups, top_k)
