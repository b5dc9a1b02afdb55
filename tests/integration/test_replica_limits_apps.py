"""Replicas sharing state: limits through a real Redis, apps and pending actions on Postgres.

Redis is a real ``redis-server`` (Debian's) started by the test on a free
loopback port, killed by PID mid-test and started again on the same port;
the tests are skipped (with the reason) only where the binary is absent. Two
"replicas" are two limiters, two apps or two services of each kind on one
Redis or one Postgres database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from enclave.app import create_app
from enclave.apps.actions import ActionStore
from enclave.apps.service import AppNotFound, AppService
from enclave.errors import Conflict, RateLimited, ServiceUnavailable
from enclave.gateway.classification import Levels
from enclave.gateway.limits import LimitRule, RedisLimiter, Subject
from enclave.gateway.routing import RoutingTable
from enclave.settings import AppsConfig, Settings
from enclave.storage.db import open_database
from enclave.storage.models import WorkspaceRow
from tests.integration.conftest import fresh_database
from tests.unit.test_gateway import (  # noqa: F401 (mocks: the fixture)
    AUTH,
    MockUpstream,
    chat,
    gateway_settings,
    mocks,
)

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, on one loopback port, nothing persisted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                *(REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL by PID: the replica loses Redis the way it would in production."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.kill()


# -- limits --------------------------------------------------------------------------


@needs_redis
def test_two_replicas_limiters_share_one_limit_exactly(redis_server: RedisServer) -> None:
    async def run() -> None:
        a, b = RedisLimiter.from_url(redis_server.url), RedisLimiter.from_url(redis_server.url)
        requests = [Subject("key", "7", LimitRule(requests_per_minute=25))]

        async def admitted(limiter: RedisLimiter) -> bool:
            try:
                await limiter.admit(requests)
            except RateLimited:
                return False
            return True

        # 80 requests at once, half through each replica: exactly 25 get in.
        results = await asyncio.gather(*(admitted(a if i % 2 else b) for i in range(80)))
        assert sum(results) == 25

        # A token budget spent on both replicas is refused on either once it is gone.
        budget = [Subject("workspace", "hr", LimitRule(token_budget=1000, budget_period="day"))]
        await a.settle(await a.admit(budget, 100), 600)
        await b.settle(await b.admit(budget, 100), 500)
        for limiter in (a, b):
            with pytest.raises(RateLimited) as refused:
                await limiter.admit(budget, 10)
            assert refused.value.code == "token_budget_exhausted"
        await a.close()
        await b.close()

    asyncio.run(run())


@needs_redis
def test_a_limiter_that_loses_redis_fails_closed_and_recovers(redis_server: RedisServer) -> None:
    async def run() -> None:
        limiter = RedisLimiter.from_url(redis_server.url)
        subjects = [Subject("key", "1", LimitRule(requests_per_minute=1000, token_budget=10**6))]
        await limiter.settle(await limiter.admit(subjects, 5), 5)

        redis_server.kill()
        for _ in range(3):  # every request refused, none let through
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable) as refused:
                await limiter.admit(subjects, 5)
            assert refused.value.code == "limiter_unavailable"
            assert refused.value.headers["Retry-After"] == "1"
            assert time.monotonic() - started < 10  # a bounded wait, never a hang

        redis_server.start()  # the same port, empty: the same limiter works again
        await limiter.settle(await limiter.admit(subjects, 5), 5)
        await limiter.close()

    asyncio.run(run())


@needs_redis
def test_replicas_without_redis_answer_503_and_recover(
    tmp_path: Path,
    redis_server: RedisServer,
    mocks: dict[str, MockUpstream],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two gateways ("replicas") share a key limit through Redis over HTTP; with Redis
    killed both answer 503 (never an unlimited 200), and once it is back they serve again."""
    monkeypatch.setenv("ENCLAVE_TEST_REDIS_URL", redis_server.url)
    with (
        TestClient(
            create_app(replica_settings(tmp_path / "a", mocks)),
            raise_server_exceptions=False,
        ) as a,
        TestClient(
            create_app(replica_settings(tmp_path / "b", mocks)),
            raise_server_exceptions=False,
        ) as b,
    ):
        clients = [a, b]
        # Each replica has its own database here; both name the admin key by id 1, as
        # replicas sharing one database would.
        key_ids = {
            c.app.state.services.keys.authenticate(AUTH["Authorization"][7:]).key_id
            for c in clients
        }
        assert key_ids == {1}
        statuses = [chat(clients[i % 2], "hi").status_code for i in range(9)]
        assert statuses == [200] * 6 + [429] * 3  # requests_per_minute 6, across replicas

        redis_server.kill()
        for client in clients:
            refused = chat(client, "hi")
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "limiter_unavailable"
            assert "rate limiter" in error["message"]
            assert refused.headers["retry-after"] == "1"

        redis_server.start()  # empty again: the minute's window starts over
        assert [chat(client, "hi").status_code for client in clients] == [200, 200]


def replica_settings(home: Path, mocks: dict[str, MockUpstream]) -> Settings:  # noqa: F811
    settings = gateway_settings(
        home, mocks, key_limits={"requests_per_minute": 6}, limiter_url="env:ENCLAVE_TEST_REDIS_URL"
    )
    settings.home = home  # ENCLAVE_HOME (set for every test) would give both one database
    return settings


# -- apps and pending actions on one Postgres database ----------------------------------


def app_document(name: str, prompt: str) -> dict[str, Any]:
    return {
        "apiVersion": "enclave/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {"model": "m", "system_prompt": prompt},
    }


@pytest.fixture
def database(postgres_uri: str) -> Iterator[tuple[str, int]]:
    url = fresh_database(postgres_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    engine, sessions = open_database(url)
    with sessions() as session:
        workspace_id = session.scalar(select(WorkspaceRow.id).where(WorkspaceRow.name == "default"))
    assert workspace_id is not None
    yield url, workspace_id
    engine.dispose()


def app_service(url: str) -> AppService:
    """One replica's AppService: its own engine on the shared database."""
    _, sessions = open_database(url)
    routing = SimpleNamespace(candidates=lambda model, capability: [model])
    return AppService(
        sessions=sessions,
        config=AppsConfig(),
        levels=Levels(["public", "internal", "confidential", "secret"]),
        routing=cast(RoutingTable, routing),
        knowledge=None,
    )


def test_an_app_applied_on_one_replica_is_served_by_the_other_at_once(
    database: tuple[str, int],
) -> None:
    url, workspace = database
    a, b = app_service(url), app_service(url)

    def served(service: AppService) -> tuple[int | None, str]:
        loaded = service.load(workspace, "helper")
        return loaded.version, loaded.manifest.spec.system_prompt or ""

    a.apply(workspace, "helper", app_document("helper", "first"), key_id=None)
    assert served(b) == (1, "first")  # b has it cached from now on
    a.apply(workspace, "helper", app_document("helper", "second"), key_id=None)
    assert served(b) == (2, "second")  # the next request after the commit, no wait
    b.rollback(workspace, "helper", 1, key_id=None)
    assert served(a) == (3, "first")
    # Deleted and applied again: its versions count from 1 again, with another spec.
    a.delete_app(workspace, "helper")
    with pytest.raises(AppNotFound):
        b.load(workspace, "helper")
    a.apply(workspace, "helper", app_document("helper", "reborn"), key_id=None)
    assert served(b) == (1, "reborn")  # not the deleted app's cached version 1


def test_an_action_confirmed_at_two_replicas_at_once_is_claimed_once(
    database: tuple[str, int],
) -> None:
    url, workspace = database
    stores = [ActionStore(open_database(url)[1], ttl_s=600) for _ in range(4)]
    for _ in range(25):
        action = stores[0].create(
            workspace_id=workspace,
            key_id=None,
            app_name="helper",
            app_ref="1",
            api="hr",
            operation="closeVacancy",
            arguments={"id": 12},
            question="close vacancy 12",
        )
        start = threading.Barrier(len(stores))
        won: list[str] = []
        refused: list[str] = []
        threads = [
            threading.Thread(
                target=confirm,
                args=(store, workspace, action.id, "executed" if i else "cancelled"),
                kwargs={"start": start, "won": won, "refused": refused},
            )
            for i, store in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1 and len(refused) == len(stores) - 1
        assert stores[-1].get(workspace, action.id).status == won[0]


def confirm(
    store: ActionStore,
    workspace: int,
    action_id: str,
    status: str,
    *,
    start: threading.Barrier,
    won: list[str],
    refused: list[str],
) -> None:
    """One replica's confirmation (or cancellation), sent at the same moment as the others."""
    start.wait()
    try:
        store.claim(workspace, action_id, status)
        won.append(status)
    except Conflict:
        refused.append(status)
