"""A key revoked (or re-cleared) at one replica stops at every replica at once (issue #16).

Two replicas are two ``KeyService`` caches on one real Postgres, each with its
``ChangeListener`` (``storage/notify.py``), as ``create_app`` wires them; a third
``KeyService`` with no listener is the CLI. The cache's TTL is set to an hour,
so only a notification can explain a replica noticing a change in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.auth import keys as keys_module
from enclave.auth.keys import KeyService
from enclave.auth.principals import Principal
from enclave.errors import AuthenticationFailed
from enclave.storage.db import open_database
from enclave.storage.notify import KEYS_CHANNEL, ChangeListener, libpq_url
from tests.integration.conftest import fresh_database

# Notifications arrive in milliseconds; this bounds the wait on a loaded 2-core machine.
WITHIN_S = 3.0


@dataclass
class Replica:
    keys: KeyService
    listener: ChangeListener | None


@dataclass
class Cluster:
    url: str
    a: Replica
    b: Replica
    cli: Replica

    @property
    def replicas(self) -> list[Replica]:
        return [self.a, self.b]


@pytest.fixture(scope="module")
def cluster(postgres_uri: str) -> Iterator[Cluster]:
    url = fresh_database(postgres_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    engines = []
    replicas = []
    for listens in (True, True, False):
        engine, sessions = open_database(url)
        engines.append(engine)
        keys = KeyService(sessions)
        listener = None
        if listens:
            listener = ChangeListener(engine.url, KEYS_CHANNEL, keys.forget, keys.forget_all)
            listener.start()
            assert listener.listening
        replicas.append(Replica(keys, listener))
    try:
        yield Cluster(url, *replicas)
    finally:
        for replica in replicas:
            if replica.listener is not None:
                replica.listener.close()
        for engine in engines:
            engine.dispose()


@pytest.fixture(autouse=True)
def hour_long_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 3600.0)


def eventually(check: Callable[[], bool], within: float = WITHIN_S) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def refused(keys: KeyService, secret: str) -> bool:
    try:
        keys.authenticate(secret)
    except AuthenticationFailed:
        return True
    return False


def principal(keys: KeyService, secret: str) -> Principal:
    return keys.authenticate(secret)


def test_a_key_revoked_at_one_replica_is_refused_at_the_other_at_once(cluster: Cluster) -> None:
    secret, info = cluster.a.keys.create("ci job")
    for replica in cluster.replicas:  # both have it cached now
        assert principal(replica.keys, secret).key_id == info.id
        assert principal(replica.keys, secret).key_id == info.id
    started = time.monotonic()
    cluster.a.keys.revoke(info.id)
    assert refused(cluster.a.keys, secret)  # the replica that revoked it: at once
    assert eventually(lambda: refused(cluster.b.keys, secret))
    assert time.monotonic() - started < WITHIN_S


def test_a_key_revoked_by_the_cli_is_refused_by_every_replica(cluster: Cluster) -> None:
    secret, info = cluster.cli.keys.create("notebook")
    for replica in cluster.replicas:
        principal(replica.keys, secret)
    cluster.cli.keys.revoke(info.id)
    for replica in cluster.replicas:
        assert eventually(lambda keys=replica.keys: refused(keys, secret))  # type: ignore[misc]


def test_a_lowered_clearance_is_in_force_at_every_replica(cluster: Cluster) -> None:
    secret, info = cluster.a.keys.create("analyst", clearance="confidential")
    for replica in cluster.replicas:
        assert principal(replica.keys, secret).clearance == "confidential"
    cluster.b.keys.set_clearance(info.id, "public")
    for replica in cluster.replicas:
        assert eventually(
            lambda keys=replica.keys: principal(keys, secret).clearance == "public"  # type: ignore[misc]
        )


def test_a_listener_that_lost_its_connection_forgets_everything_and_listens_again(
    cluster: Cluster,
) -> None:
    listener = cluster.b.listener
    assert listener is not None
    secret, info = cluster.a.keys.create("while disconnected")
    principal(cluster.b.keys, secret)
    before = listener.reconnects
    with psycopg.connect(libpq_url(cluster.url), autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query ILIKE 'LISTEN%' AND datname = current_database()"
        ).fetchall()
    assert ended
    # Revoked while B may not be listening: the notification can be lost, so B must
    # drop its whole cache when it listens again.
    cluster.a.keys.revoke(info.id)
    assert eventually(lambda: listener.reconnects > before and listener.listening, within=10)
    assert eventually(lambda: refused(cluster.b.keys, secret))
    # And it hears the next change.
    secret, info = cluster.a.keys.create("after the reconnect")
    principal(cluster.b.keys, secret)
    cluster.a.keys.revoke(info.id)
    assert eventually(lambda: refused(cluster.b.keys, secret))


# Each step: (replica or the CLI that makes the change, what it does) or a lookup.
step = st.one_of(
    st.tuples(st.just("use"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("revoke"), st.sampled_from(["a", "b", "cli"])),
    st.tuples(st.just("clear"), st.sampled_from(["a", "b", "cli"])),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_no_replica_serves_a_key_past_a_change_made_anywhere(
    cluster: Cluster, steps: list[tuple[str, str]]
) -> None:
    """Whatever the order of lookups and changes, and wherever each change is made, every
    replica agrees with the database within ``WITHIN_S`` (the cache TTL is an hour)."""
    # The hour-long TTL of the autouse fixture holds for every example of this one call.
    secret, info = cluster.a.keys.create("property", clearance="secret")
    revoked, clearance = False, "secret"
    levels = iter(["confidential", "internal", "public"] * 3)
    by_name = {"a": cluster.a, "b": cluster.b, "cli": cluster.cli}
    for action, where in steps:
        keys = by_name[where].keys
        if action == "use":
            if revoked:
                assert refused(keys, secret)
            else:
                assert principal(keys, secret).clearance == clearance
        elif action == "revoke":
            keys.revoke(info.id)
            revoked = True
        elif not revoked:
            clearance = next(levels)
            keys.set_clearance(info.id, clearance)
        for replica in cluster.replicas:  # the invariant, after every step
            if revoked:
                assert eventually(lambda k=replica.keys: refused(k, secret))  # type: ignore[misc]
            else:
                assert eventually(
                    lambda k=replica.keys, c=clearance: principal(k, secret).clearance == c  # type: ignore[misc]
                )
