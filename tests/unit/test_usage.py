"""The usage ledger: batched recording, reports by UTC day, budget seeding and the CLI."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from enclave.cli.main import app
from enclave.gateway.usage import UsageLedger, UsageLine, UsageRecord
from enclave.settings import load_settings
from enclave.storage.db import open_database

NOV1 = date(2026, 11, 1)
NOV2 = date(2026, 11, 2)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine, sessions = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    yield engine, sessions
    engine.dispose()


@pytest.fixture
def ledger(database: tuple[Engine, sessionmaker[Session]]) -> Iterator[UsageLedger]:
    ledger = UsageLedger(database[1], flush_interval=0.01)
    ledger.start()
    yield ledger
    ledger.close()


def usage(
    when: datetime,
    *,
    key_id: int | None = 1,
    workspace: str = "default",
    provider: str = "local",
    model: str = "smollm2",
    prompt: int = 10,
    completion: int = 5,
) -> UsageRecord:
    return UsageRecord(when, key_id, workspace, provider, model, prompt, completion)


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def test_report_groups_by_utc_day_key_provider_and_model(ledger: UsageLedger) -> None:
    ledger.record(usage(at(NOV1, 23, 59, 59), prompt=100, completion=1))
    # 01:30 in UTC+2 is still 1 November in UTC.
    plus_two = timezone(timedelta(hours=2))
    ledger.record(usage(datetime(2026, 11, 2, 1, 30, tzinfo=plus_two), prompt=20, completion=2))
    ledger.record(usage(at(NOV2, 0, 0, 1), prompt=7, completion=3))
    ledger.record(usage(at(NOV2, 9), provider="eu-cloud", model="big", prompt=50, completion=50))
    ledger.record(usage(at(NOV2, 10), key_id=2, prompt=1, completion=1))
    ledger.record(usage(at(NOV2, 11), key_id=None, prompt=4, completion=0))

    lines = ledger.report()
    assert lines == [
        UsageLine(NOV1, "default", 1, "local", "smollm2", 2, 120, 3),
        UsageLine(NOV2, "default", None, "local", "smollm2", 1, 4, 0),
        UsageLine(NOV2, "default", 1, "eu-cloud", "big", 1, 50, 50),
        UsageLine(NOV2, "default", 1, "local", "smollm2", 1, 7, 3),
        UsageLine(NOV2, "default", 2, "local", "smollm2", 1, 1, 1),
    ]
    assert lines[0].total_tokens == 123


def test_report_totals_equal_what_many_threads_recorded(ledger: UsageLedger) -> None:
    tokens: Counter[tuple[date, int, str]] = Counter()
    requests: Counter[tuple[date, int, str]] = Counter()
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(250):
            day = rng.choice([NOV1, NOV2])
            key = rng.choice([1, 2, 3])
            model = rng.choice(["a", "b"])
            prompt, completion = rng.randrange(0, 500), rng.randrange(0, 500)
            ledger.record(
                usage(
                    at(day, rng.randrange(24)),
                    key_id=key,
                    model=model,
                    prompt=prompt,
                    completion=completion,
                )
            )
            with lock:
                tokens[(day, key, model)] += prompt + completion
                requests[(day, key, model)] += 1

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines = ledger.report()
    assert sum(line.requests for line in lines) == 1000
    assert {(line.day, line.key_id, line.model): line.total_tokens for line in lines} == tokens
    assert {(line.day, line.key_id, line.model): line.requests for line in lines} == requests


def test_report_filters(ledger: UsageLedger) -> None:
    ledger.record(usage(at(NOV1, 8), workspace="research", key_id=3))
    ledger.record(usage(at(NOV2, 8), workspace="research", key_id=3))
    ledger.record(usage(at(NOV2, 9), workspace="default", key_id=1))
    ledger.record(usage(at(date(2026, 11, 3), 0), workspace="default", key_id=1))

    assert [line.day for line in ledger.report(since=NOV2, until=NOV2)] == [NOV2, NOV2]
    assert {line.workspace for line in ledger.report(workspace="research")} == {"research"}
    assert [(line.day, line.key_id) for line in ledger.report(key_id=1)] == [
        (NOV2, 1),
        (date(2026, 11, 3), 1),
    ]
    assert ledger.report(workspace="nobody") == []


def test_report_includes_records_not_yet_flushed(
    database: tuple[Engine, sessionmaker[Session]],
) -> None:
    ledger = UsageLedger(database[1], flush_interval=60)
    ledger.start()
    ledger.record(usage(at(NOV1, 8), prompt=3, completion=4))
    assert [line.total_tokens for line in ledger.report()] == [7]
    ledger.close()


def test_tokens_since_counts_per_workspace_and_key(
    database: tuple[Engine, sessionmaker[Session]],
) -> None:
    # Not started, as at server start-up, where budgets are seeded before the writer runs.
    ledger = UsageLedger(database[1])
    ledger.record(usage(at(NOV1, 23), workspace="research", key_id=3, prompt=1000))
    ledger.record(usage(at(NOV2, 1), workspace="research", key_id=3, prompt=10, completion=5))
    ledger.record(usage(at(NOV2, 2), workspace="research", key_id=4, prompt=1, completion=1))
    ledger.record(usage(at(NOV2, 3), workspace="default", key_id=None, prompt=2, completion=0))

    assert ledger.tokens_since(at(NOV2, 0)) == {
        ("workspace", "research"): 17,
        ("workspace", "default"): 2,
        ("key", "3"): 15,
        ("key", "4"): 2,
    }
    assert ledger.tokens_since(at(NOV2, 2))[("workspace", "research")] == 2
    assert ledger.tokens_since(at(NOV2, 4)) == {}


def test_recording_survives_a_transient_database_error(
    database: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, sessions = database
    failures = {"left": 2}

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO usage") and failures["left"]:
            failures["left"] -= 1
            raise OperationalError(statement, {}, Exception("database is locked"))

    event.listen(engine, "before_cursor_execute", before)
    ledger = UsageLedger(sessions, flush_interval=0.01)
    ledger.start()
    for hour in range(10):
        ledger.record(usage(at(NOV1, hour)))
    assert [line.requests for line in ledger.report()] == [10]
    assert failures["left"] == 0
    ledger.close()


# The CLI, against a temporary ENCLAVE_HOME.


@pytest.fixture
def home(enclave_home: Path) -> Path:
    home = enclave_home
    settings = load_settings()
    engine, sessions = open_database(settings.resolved_database_url)
    ledger = UsageLedger(sessions)
    ledger.record(usage(at(NOV1, 10), workspace="research", key_id=3, prompt=100, completion=20))
    ledger.record(usage(at(NOV1, 11), workspace="research", key_id=3, prompt=50, completion=30))
    ledger.record(usage(at(NOV2, 12), workspace="default", key_id=None, provider="eu", model="m"))
    ledger.close()
    engine.dispose()
    return home


def test_cli_prints_a_table_by_day(home: Path) -> None:
    result = CliRunner().invoke(app, ["usage", "--since", "2026-11-01"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        [
            "DAY",
            "WORKSPACE",
            "KEY",
            "PROVIDER",
            "MODEL",
            "REQUESTS",
            "PROMPT",
            "COMPLETION",
            "TOTAL",
        ],
        ["2026-11-01", "research", "3", "local", "smollm2", "2", "150", "50", "200"],
        ["2026-11-02", "default", "-", "eu", "m", "1", "10", "5", "15"],
        ["total", "3", "160", "55", "215"],
    ]


def test_cli_json_and_filters(home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["usage", "--since", "2026-11-01", "--until", "2026-11-01", "--key", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "day": "2026-11-01",
            "workspace": "research",
            "key_id": 3,
            "provider": "local",
            "model": "smollm2",
            "requests": 2,
            "prompt_tokens": 150,
            "completion_tokens": 50,
            "total_tokens": 200,
            "audio_seconds": 0.0,
        }
    ]
    result = runner.invoke(app, ["usage", "--since", "2026-11-01", "--workspace", "default"])
    assert [line.split()[1] for line in result.stdout.splitlines()[1:-1]] == ["default"]


def test_cli_shows_the_last_30_days_by_default(home: Path) -> None:
    settings = load_settings()
    engine, sessions = open_database(settings.resolved_database_url)
    ledger = UsageLedger(sessions)
    now = datetime.now(UTC)
    ledger.record(usage(now - timedelta(days=40), workspace="old"))
    ledger.record(usage(now - timedelta(days=1), workspace="recent"))
    ledger.close()
    engine.dispose()
    result = CliRunner().invoke(app, ["usage", "--json"])
    assert result.exit_code == 0, result.output
    workspaces = {line["workspace"] for line in json.loads(result.stdout)}
    assert "recent" in workspaces
    assert "old" not in workspaces


def test_cli_refuses_a_bad_date(home: Path) -> None:
    result = CliRunner().invoke(app, ["usage", "--since", "01/11/2026"])
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_audio_seconds_are_summed_and_shown_in_the_cli(enclave_home: Path) -> None:
    settings = load_settings()
    engine, sessions = open_database(settings.resolved_database_url)
    ledger = UsageLedger(sessions)
    for seconds in (4.25, 2.5):
        ledger.record(UsageRecord(at(NOV1, 9), 3, "default", "speech", "whisper", 0, 12, seconds))
    ledger.record(usage(at(NOV1, 10), model="smollm2"))
    lines = ledger.report()
    ledger.close()
    engine.dispose()
    assert [(line.model, line.requests, line.audio_seconds) for line in lines] == [
        ("smollm2", 1, 0.0),
        ("whisper", 2, 6.75),
    ]
    assert lines[1].as_dict()["audio_seconds"] == 6.75
    result = CliRunner().invoke(app, ["usage", "--since", "2026-11-01"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][-1] == "AUDIO_S"
    assert rows[1][-1] == "0.0" and rows[2][-1] == "6.8" and rows[-1][-1] == "6.8"
