"""Roles never exceed what groups grant, and a key never exceeds its owner.

Hypothesis draws the identity config (which groups are admins, members and
builders of which workspace), a person's groups and a key's own role; the
properties are checked on :class:`RoleMap`, through :class:`KeyService` on a real
database, and over HTTP, where the user would notice: an admin route and
applying an app answer 403 exactly when the role is too low.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.app import create_app
from enclave.auth.keys import KeyService
from enclave.auth.roles import ROLES, RoleMap, capped, rank
from enclave.errors import AuthenticationFailed
from enclave.providers.registry import ModelRegistry
from enclave.settings import IdentityConfig, Settings
from enclave.storage.db import open_database
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

GROUPS = [f"g{i}" for i in range(5)]
WORKSPACES = ["w0", "w1"]

group_sets = st.frozensets(st.sampled_from(GROUPS))
refs = group_sets.map(lambda names: sorted(f"group:{name}" for name in names))
configs = st.builds(
    lambda admins, workspaces: IdentityConfig(admins=admins, workspaces=workspaces),
    refs,
    st.fixed_dictionaries(
        {name: st.fixed_dictionaries({"members": refs, "builders": refs}) for name in WORKSPACES}
    ),
)
roles = st.sampled_from(ROLES)


def granted_by_one_group(config: IdentityConfig, group: str, workspace: str) -> int:
    """What a single group grants, read from the config directly (not through RoleMap)."""
    ref = f"group:{group}"
    if ref in config.admins:
        return rank("admin")
    place = config.workspaces.get(workspace)
    if place is not None and ref in place.builders:
        return rank("builder")
    if place is not None and ref in place.members:
        return rank("member")
    return 0


@given(configs, group_sets, st.sampled_from([*WORKSPACES, "default"]))
def test_a_role_is_exactly_the_highest_any_of_the_groups_grants(
    config: IdentityConfig, groups: frozenset[str], workspace: str
) -> None:
    role = RoleMap(config).role_in(groups, workspace)
    best = max((granted_by_one_group(config, group, workspace) for group in groups), default=0)
    assert rank(role) == best


@given(configs, group_sets, group_sets, st.sampled_from(WORKSPACES))
def test_fewer_groups_never_give_more(
    config: IdentityConfig, groups: frozenset[str], removed: frozenset[str], workspace: str
) -> None:
    roles_map = RoleMap(config)
    assert rank(roles_map.role_in(groups - removed, workspace)) <= rank(
        roles_map.role_in(groups, workspace)
    )


@given(roles, st.one_of(st.none(), roles))
def test_a_cap_is_the_lower_of_the_two(own: Any, owner: Any) -> None:
    result = capped(own, owner)
    assert rank(result) == min(rank(own), rank(owner))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Any]:
    engine, sessions = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    yield sessions
    engine.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(configs, group_sets, roles, st.sampled_from(WORKSPACES), st.booleans())
def test_a_keys_rights_never_exceed_its_owners_groups(
    database: Any,
    config: IdentityConfig,
    groups: frozenset[str],
    own: Any,
    workspace: str,
    disabled: bool,
) -> None:
    keys = KeyService(database, config)
    user = keys.users.signed_in(
        "https://idp.example",
        f"sub-{len(keys.users.list())}",
        name="P",
        email=None,
        groups=groups,
        enabled_if_new=not disabled,
    )
    secret, _ = keys.create("k", workspace=workspace, user_id=user.id, role=own)
    owner_role = RoleMap(config).role_in(groups, workspace)
    try:
        principal = keys.authenticate(secret)
    except AuthenticationFailed:
        assert disabled or owner_role is None  # refused only when the owner may not act
        return
    assert not disabled and owner_role is not None
    assert principal.role is not None and principal.role == capped(own, owner_role)
    assert rank(principal.role) <= rank(owner_role) and rank(principal.role) <= rank(own)
    assert principal.is_admin == (principal.role == "admin")
    assert principal.groups == groups and principal.user_id == user.id


# -- over HTTP -------------------------------------------------------------------------------

HTTP_CONFIG = {
    "admins": ["group:g0"],
    "workspaces": {"w0": {"members": ["group:g1", "group:g3"], "builders": ["group:g2"]}},
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    app_settings = Settings(home=tmp_path / "home", admin_key=ADMIN_KEY, identity=HTTP_CONFIG)
    registry = ModelRegistry([ScriptedProvider()], default_model="scripted")
    with TestClient(create_app(app_settings, registry=registry)) as client:
        yield client


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(group_sets, roles)
def test_over_http_a_persons_key_reaches_only_what_their_groups_allow(
    app: TestClient, groups: frozenset[str], own: Any
) -> None:
    services = app.app.state.services  # type: ignore[attr-defined]
    user = services.keys.users.signed_in(
        "https://idp.example",
        f"sub-{sorted(groups)}-{own}",
        name="P",
        email=None,
        groups=groups,
        enabled_if_new=True,
    )
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    made = app.post(
        "/api/keys",
        json={"name": "k", "workspace": "w0", "user_id": user.id, "role": own},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    effective = capped(own, RoleMap(IdentityConfig(**HTTP_CONFIG)).role_in(groups, "w0"))

    me = app.get("/api/me", headers=key)
    if effective is None:
        assert me.status_code == 401
        return
    assert me.json()["role"] == effective
    assert (app.get("/api/keys", headers=key).status_code == 403) == (effective != "admin")
    applied = app.put("/api/apps/x", json={"spec": {}}, headers=key)
    assert (applied.status_code == 403) == (effective == "member")
