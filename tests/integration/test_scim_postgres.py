"""SCIM provisioning on Postgres: the lifecycle, the race between replicas and the
property of ``tests/unit/test_scim.py``, run on a fresh Postgres database (migration
0014, the row locks of ``auth/directory.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import fresh_database
from tests.unit.test_oidc_sign_in import SECRET_ENV, running_clients
from tests.unit.test_oidc_sign_in import provider as provider
from tests.unit.test_scim import TOKEN, TOKEN_ENV
from tests.unit.test_scim import client as client
from tests.unit.test_scim import (
    test_a_request_is_allowed_iff_active_and_in_a_granting_group as allowed_iff,
)
from tests.unit.test_scim import (
    test_member_changes_racing_at_two_replicas_both_count as racing,
)
from tests.unit.test_scim import (
    test_provision_sign_in_lose_a_group_deactivate_and_delete as lifecycle,
)


@pytest.fixture
def make_client(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    postgres_uri: str,
) -> Iterator[Any]:
    monkeypatch.setenv(SECRET_ENV, "the-client-secret")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)

    def database_url() -> str:
        url = fresh_database(postgres_uri)
        return url.replace("postgresql://", "postgresql+psycopg://", 1)

    with running_clients(tmp_path, provider, database_url=database_url) as make:
        yield lambda **scim: make(scim={"token": f"env:{TOKEN_ENV}", **scim})


def test_the_database_is_postgres(client: TestClient) -> None:
    assert client.app.state.engine.dialect.name == "postgresql"  # type: ignore[attr-defined]


def test_provision_sign_in_lose_a_group_deactivate_and_delete(
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lifecycle(client, caplog)


@pytest.mark.parametrize(
    ("raced", "wanted"),
    [
        ({"op": "Add", "path": "members", "value": [{"value": "{c}"}]}, {"a", "b", "c"}),
        ({"op": "Remove", "path": 'members[value eq "{a}"]'}, {"b"}),
    ],
)
def test_member_changes_racing_at_two_replicas_both_count(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    raced: dict[str, Any],
    wanted: set[str],
) -> None:
    racing(client, monkeypatch, raced, wanted)


def test_a_request_is_allowed_iff_active_and_in_a_granting_group(
    client: TestClient,
) -> None:
    allowed_iff(client=client)
