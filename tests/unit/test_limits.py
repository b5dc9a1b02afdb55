"""Limits per key and workspace, against both backends, on an injected clock.

Every behavioural test runs against :class:`InProcessLimiter` and against
:class:`RedisLimiter` on fakeredis (with Lua through lupa). A hypothesis
state machine drives both with random admits, settlements and clock jumps and
compares every decision with a naive model that recomputes the limits from the
full history.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from enclave.errors import ConfigError, RateLimited
from enclave.gateway.limits import (
    InProcessLimiter,
    Limiter,
    LimitRule,
    RedisLimiter,
    Reservation,
    Subject,
    limiter_from_url,
    period_bounds,
)

try:
    import fakeredis
    import lupa  # noqa: F401  (fakeredis runs Lua scripts with it)

    REDIS_MISSING = ""
except ImportError:  # pragma: no cover - dev extra not installed
    REDIS_MISSING = "fakeredis[lua] is not installed (pip install -e '.[dev]')"

T = TypeVar("T")
BACKENDS = [
    pytest.param("memory"),
    pytest.param("redis", marks=pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING)),
]


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


START = utc(2025, 3, 10, 12, 0, 0)  # a Monday noon, far from any period boundary


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """One limiter (or several replicas sharing one Redis) driven synchronously."""

    def __init__(self, backend: str, *, now: float = START, reservation_ttl: float = 900.0):
        self.backend = backend
        self.clock = FakeClock(now)
        self.reservation_ttl = reservation_ttl
        self.loop = asyncio.new_event_loop()
        self.server = fakeredis.FakeServer() if backend == "redis" else None
        self.limiters: list[Limiter] = []
        self.limiter = self.replica()

    def replica(self) -> Limiter:
        limiter: Limiter
        if self.backend == "memory":
            limiter = InProcessLimiter(self.clock, reservation_ttl=self.reservation_ttl)
        else:
            client = fakeredis.FakeAsyncRedis(server=self.server)
            limiter = RedisLimiter(client, clock=self.clock, reservation_ttl=self.reservation_ttl)
        self.limiters.append(limiter)
        return limiter

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def admit(self, *subjects: Subject, tokens: int = 0, via: Limiter | None = None) -> Reservation:
        return self.run((via or self.limiter).admit(subjects, tokens))

    def refused(self, *subjects: Subject, tokens: int = 0) -> RateLimited:
        with pytest.raises(RateLimited) as info:
            self.admit(*subjects, tokens=tokens)
        return info.value

    def settle(self, reservation: Reservation, tokens: int) -> None:
        self.run(self.limiter.settle(reservation, tokens))

    def spend(self, subject: Subject, tokens: int) -> None:
        """One call that spends ``tokens``, settled at once."""
        self.settle(self.admit(subject), tokens)

    def close(self) -> None:
        for limiter in self.limiters:
            self.run(limiter.close())
        self.loop.close()


@pytest.fixture(params=BACKENDS)
def limits(request: pytest.FixtureRequest) -> Iterator[Harness]:
    harness = Harness(request.param)
    yield harness
    harness.close()


def workspace(**rule: Any) -> Subject:
    return Subject("workspace", "research", LimitRule(**rule))


def key(**rule: Any) -> Subject:
    return Subject("key", "17", LimitRule(**rule))


# -- requests per minute ------------------------------------------------------------


def test_n_requests_pass_and_the_next_is_refused_until_the_oldest_leaves(limits: Harness) -> None:
    research = workspace(requests_per_minute=3)
    for _ in range(3):
        limits.admit(research)
        limits.clock.advance(10)
    error = limits.refused(research)  # 30 s after the first of three
    assert error.status_code == 429
    assert error.code == "rate_limit_requests"
    assert error.retry_after == 30
    assert error.headers["Retry-After"] == "30"
    assert error.message == "workspace 'research' exceeded 3 requests per minute"


def test_the_request_window_slides(limits: Harness) -> None:
    research = workspace(requests_per_minute=2)
    limits.admit(research)
    limits.clock.advance(20)
    limits.admit(research)
    limits.clock.advance(39.5)
    assert limits.refused(research).retry_after == 1  # 0.5 s left, rounded up
    limits.clock.advance(0.5)  # the first request is now 60 s old
    limits.admit(research)
    assert limits.refused(research).retry_after == 20  # the second leaves at 80 s


def test_refused_requests_are_not_counted(limits: Harness) -> None:
    research = workspace(requests_per_minute=1)
    limits.admit(research)
    for _ in range(5):
        limits.clock.advance(10)
        limits.refused(research)
    limits.clock.advance(10)  # 60 s after the only admitted request
    limits.admit(research)


def test_a_refusal_by_the_workspace_counts_nothing_for_the_key(limits: Harness) -> None:
    alice = key(requests_per_minute=5)
    research = workspace(requests_per_minute=2)
    limits.admit(alice, research)
    limits.admit(alice, research)
    error = limits.refused(alice, research)
    assert error.message == "workspace 'research' exceeded 2 requests per minute"
    # Two of the key's five are used; the refused third did not count.
    for _ in range(3):
        limits.admit(alice)
    assert limits.refused(alice).message == "key '17' exceeded 5 requests per minute"


def test_the_error_names_the_limit_with_the_longest_wait(limits: Harness) -> None:
    alice = key(requests_per_minute=1)
    research = workspace(requests_per_minute=1)
    limits.admit(alice)
    limits.clock.advance(20)
    limits.admit(research)
    limits.clock.advance(10)
    error = limits.refused(alice, research)  # the key frees in 30 s, the workspace in 50 s
    assert error.retry_after == 50
    assert "workspace 'research'" in error.message


def test_subjects_are_counted_separately(limits: Harness) -> None:
    limits.admit(Subject("key", "1", LimitRule(requests_per_minute=1)))
    limits.admit(Subject("key", "2", LimitRule(requests_per_minute=1)))
    limits.admit(Subject("workspace", "1", LimitRule(requests_per_minute=1)))


def test_an_empty_rule_never_refuses(limits: Harness) -> None:
    assert LimitRule().empty
    assert not LimitRule(token_budget=5).empty
    for _ in range(100):
        limits.settle(limits.admit(key(), tokens=10**6), 10**6)


def test_rules_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        LimitRule(requests_per_minute=0)
    with pytest.raises(ValueError, match="budget_period"):
        LimitRule(budget_period="week")  # type: ignore[arg-type]


# -- tokens per minute --------------------------------------------------------------


def test_tokens_per_minute_refuse_once_settled_tokens_reach_the_limit(limits: Harness) -> None:
    research = workspace(tokens_per_minute=100)
    limits.spend(research, 60)
    limits.clock.advance(10)
    limits.spend(research, 39)  # 99 of 100
    limits.clock.advance(10)
    limits.spend(research, 50)  # admitted below the limit, then overshoots it: 149
    limits.clock.advance(10)
    error = limits.refused(research)
    assert error.code == "rate_limit_tokens"
    assert error.message == "workspace 'research' exceeded 100 tokens per minute"
    # 50 tokens must leave; the first 60, settled at 0 s, leave at 60 s.
    assert error.retry_after == 30
    limits.clock.advance(29)
    limits.refused(research)
    limits.clock.advance(1)
    limits.admit(research)


def test_the_retry_after_waits_for_enough_tokens_to_leave(limits: Harness) -> None:
    research = workspace(tokens_per_minute=100)
    limits.spend(research, 10)
    limits.clock.advance(5)
    limits.spend(research, 30)
    limits.clock.advance(5)
    limits.spend(research, 70)  # 110: 11 must leave, so the first two (at 0 s and 5 s)
    assert limits.refused(research).retry_after == 55


def test_in_flight_estimates_count_toward_tokens_per_minute(limits: Harness) -> None:
    research = workspace(tokens_per_minute=100)
    streaming = limits.admit(research, tokens=100)
    error = limits.refused(research)
    assert error.code == "rate_limit_tokens"
    assert error.retry_after == 1  # nothing settled can leave; the estimate settles soon
    limits.settle(streaming, 10)  # the estimate is replaced by what was spent
    limits.admit(research)


# -- budgets ------------------------------------------------------------------------


def test_a_daily_budget_refuses_at_the_configured_number_until_midnight(limits: Harness) -> None:
    alice = key(token_budget=1000, budget_period="day")
    limits.spend(alice, 999)
    limits.clock.advance(3600)
    limits.spend(alice, 1)
    error = limits.refused(alice)  # 13:00 UTC
    assert error.code == "token_budget_exhausted"
    assert error.message == "key '17' used up its token budget of 1000 tokens per day"
    assert error.retry_after == 11 * 3600
    limits.clock.now = utc(2025, 3, 10, 23, 59, 59)
    assert limits.refused(alice).retry_after == 1
    limits.clock.now = utc(2025, 3, 11)
    limits.admit(alice)


@pytest.mark.parametrize(
    ("now", "seconds_left"),
    [
        (utc(2024, 12, 31, 23, 0, 0), 3600),  # December into January of the next year
        (utc(2024, 2, 29, 12, 0, 0), 12 * 3600),  # the end of a leap February
        (utc(2025, 1, 31, 23, 59, 30), 30),
        (utc(2025, 3, 1, 0, 0, 0), 31 * 86400),  # the first second of a month
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_monthly_budget_resets_at_the_utc_month_boundary(
    backend: str, now: float, seconds_left: int
) -> None:
    limits = Harness(backend, now=now)
    try:
        research = workspace(token_budget=100)
        limits.spend(research, 100)
        error = limits.refused(research)
        assert error.code == "token_budget_exhausted"
        assert error.retry_after == seconds_left
        assert error.message.endswith("token budget of 100 tokens per month")
        limits.clock.advance(seconds_left - 1)
        limits.refused(research)
        limits.clock.advance(1)
        limits.admit(research)
    finally:
        limits.close()


def test_period_bounds_are_utc_calendar_periods() -> None:
    assert period_bounds("month", utc(2024, 12, 15, 8)) == (utc(2024, 12, 1), utc(2025, 1, 1))
    assert period_bounds("day", utc(2024, 12, 31, 23, 59, 59)) == (
        utc(2024, 12, 31),
        utc(2025, 1, 1),
    )


def test_in_flight_estimates_count_toward_the_budget_and_settle_replaces_them(
    limits: Harness,
) -> None:
    research = workspace(token_budget=1000)
    first = limits.admit(research, tokens=600)
    second = limits.admit(research, tokens=400)
    assert limits.refused(research).code == "token_budget_exhausted"
    limits.settle(first, 50)
    limits.settle(second, 50)
    limits.admit(research)  # 100 spent of 1000
    limits.spend(research, 899)  # 999
    limits.admit(research)
    limits.spend(research, 1)
    limits.refused(research)


def test_settling_twice_counts_once_and_release_counts_nothing(limits: Harness) -> None:
    research = workspace(token_budget=100)
    spent = limits.admit(research, tokens=10)
    limits.settle(spent, 60)
    limits.settle(spent, 60)
    vanished = limits.admit(research, tokens=90)
    limits.run(limits.limiter.release(vanished))
    assert vanished.settled
    limits.spend(research, 39)  # 99
    limits.admit(research)


def test_seeded_budgets_count(limits: Harness) -> None:
    research = workspace(token_budget=1000)
    limits.run(limits.limiter.seed_budget("workspace", "research", 990))
    limits.admit(research)
    limits.spend(research, 10)
    assert limits.refused(research).code == "token_budget_exhausted"
    # Another subject is untouched by the seed.
    limits.admit(Subject("workspace", "other", research.rule))


def test_seeding_again_does_not_double_count(limits: Harness) -> None:
    research = workspace(token_budget=1000)
    seed = limits.limiter.seed_budget
    limits.run(seed("workspace", "research", 500))
    limits.run(seed("workspace", "research", 500))
    limits.spend(research, 499)  # 999
    limits.admit(research)
    limits.run(seed("workspace", "research", 500))  # lower than counted: ignored
    limits.spend(research, 1)
    limits.refused(research)


def test_a_seed_lapses_with_its_period(limits: Harness) -> None:
    limits.clock.now = utc(2025, 3, 31, 23, 59)
    research = workspace(token_budget=1000)
    limits.run(limits.limiter.seed_budget("workspace", "research", 1000))
    assert limits.refused(research).retry_after == 60
    limits.clock.advance(60)
    limits.admit(research)


def test_a_seed_for_a_daily_budget_ends_at_midnight(limits: Harness) -> None:
    limits.clock.now = utc(2025, 3, 10, 23, 0)
    alice = key(token_budget=10, budget_period="day")
    limits.run(limits.limiter.seed_budget("key", "17", 10))
    assert limits.refused(alice).retry_after == 3600
    limits.clock.now = utc(2025, 3, 11)
    limits.admit(alice)


# -- reservations and memory ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unsettled_reservation_gives_its_estimate_back_after_the_ttl(backend: str) -> None:
    limits = Harness(backend, reservation_ttl=300)
    try:
        research = workspace(tokens_per_minute=100, token_budget=10_000)
        lost = limits.admit(research, tokens=100)
        limits.clock.advance(299)
        limits.refused(research)
        limits.clock.advance(61)  # past the TTL and the in-process sweep
        limits.admit(research)
        # A late settlement still counts what was spent.
        limits.settle(lost, 100)
        assert limits.refused(research).code == "rate_limit_tokens"
    finally:
        limits.close()


def test_a_budget_outlives_an_idle_subject(limits: Harness) -> None:
    alice = key(token_budget=100, budget_period="day")
    limits.spend(alice, 100)
    for _ in range(10):  # two idle hours, other traffic meanwhile
        limits.clock.advance(720)
        limits.admit(workspace(requests_per_minute=1))
    assert limits.refused(alice).code == "token_budget_exhausted"


def test_idle_subjects_are_forgotten_in_process() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(clock)
    rule = LimitRule(requests_per_minute=10, tokens_per_minute=1000)

    async def traffic() -> None:
        for number in range(1000):
            reservation = await limiter.admit([Subject("key", str(number), rule)], 10)
            await limiter.settle(reservation, 10)
        assert limiter.tracked_subjects == 1000
        clock.advance(61)
        await limiter.admit([Subject("key", "new", rule)])

    asyncio.run(traffic())
    assert limiter.tracked_subjects == 1


@pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING or "-")
def test_every_redis_key_expires() -> None:
    limits = Harness("redis")
    try:
        everything = LimitRule(requests_per_minute=5, tokens_per_minute=500, token_budget=5000)
        limits.spend(Subject("key", "1", everything), 10)
        limits.admit(Subject("workspace", "w", everything), tokens=5)
        limits.run(limits.limiter.seed_budget("key", "2", 10))
        client = fakeredis.FakeAsyncRedis(server=limits.server)
        keys = limits.run(client.keys("*"))
        assert {name.decode().removeprefix("enclave:limits:") for name in keys} == {
            "key:1:req",
            "key:1:tok",
            "key:1:st",  # key 1's estimate was settled, so it has nothing in flight
            "workspace:w:req",
            "workspace:w:fly",
            "workspace:w:st",
            "key:2:st",
        }
        ttls = [limits.run(client.pttl(name)) for name in keys]
        assert all(ttl > 0 for ttl in ttls), dict(zip(keys, ttls, strict=True))
        # A monthly budget's state lives until the month is over, no longer.
        month_end = utc(2025, 4, 1)
        budget_ttl = limits.run(client.pttl("enclave:limits:key:1:st")) / 1000
        assert month_end - START < budget_ttl <= month_end - START + 61
        limits.run(client.aclose())
    finally:
        limits.close()


@pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING or "-")
def test_a_token_log_that_redis_expired_does_not_leave_its_total_behind() -> None:
    limits = Harness("redis")
    try:
        research = workspace(tokens_per_minute=100)
        limits.spend(research, 95)
        streaming = limits.admit(research)
        limits.clock.advance(70)
        # Redis drops the idle token log on its own (fakeredis expires on real time).
        client = fakeredis.FakeAsyncRedis(server=limits.server)
        limits.run(client.delete("enclave:limits:workspace:research:tok"))
        limits.settle(streaming, 10)
        limits.admit(research)  # 10 in the window, not 105
        limits.run(client.aclose())
    finally:
        limits.close()


@pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING or "-")
def test_redis_replicas_share_limits() -> None:
    limits = Harness("redis")
    try:
        other = limits.replica()
        research = workspace(requests_per_minute=2, token_budget=100)
        limits.admit(research)
        limits.admit(research, via=other)
        assert limits.refused(research).code == "rate_limit_requests"
        limits.clock.advance(60)
        reservation = limits.admit(research, via=other, tokens=10)
        limits.run(other.settle(reservation, 100))
        assert limits.refused(research).code == "token_budget_exhausted"
    finally:
        limits.close()


# -- choosing a backend -------------------------------------------------------------


def test_an_unset_url_keeps_limits_in_process() -> None:
    assert isinstance(limiter_from_url(None), InProcessLimiter)
    assert isinstance(limiter_from_url(""), InProcessLimiter)


@pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING or "-")
def test_a_redis_url_gives_a_redis_limiter() -> None:
    limiter = limiter_from_url("redis://:secret@localhost:6379/0")  # does not connect yet
    assert isinstance(limiter, RedisLimiter)
    asyncio.run(limiter.close())


def test_an_unknown_scheme_is_a_config_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        limiter_from_url("memcached://admin:hunter2@cache:11211")
    assert "memcached" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_redis_url_without_the_redis_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r"enclave\[redis\]"):
        limiter_from_url("redis://localhost:6379/0")


# -- the limiter against a model that recomputes everything from the history ------------


@dataclass
class Open:
    reservation: Reservation
    subjects: tuple[Subject, ...]
    estimate: int


@dataclass
class History:
    """Every admission and settlement, per subject, and the calls still open."""

    admitted: dict[str, list[float]] = field(default_factory=dict)
    settled: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    open: list[Open] = field(default_factory=list)

    def breaches(self, subjects: tuple[Subject, ...], now: float) -> list[tuple[float, str]]:
        found = []
        for subject in subjects:
            rule = subject.rule
            admitted = [t for t in self.admitted.get(subject.id, []) if t > now - 60.0]
            settled = self.settled.get(subject.id, [])
            inflight = sum(call.estimate for call in self.open if subject in call.subjects)
            if rule.requests_per_minute and len(admitted) >= rule.requests_per_minute:
                oldest = sorted(admitted)[len(admitted) - rule.requests_per_minute]
                found.append((oldest + 60.0 - now, "rate_limit_requests"))
            if rule.tokens_per_minute:
                window = [(t, n) for t, n in settled if t > now - 60.0]
                used = sum(n for _, n in window)
                if used + inflight >= rule.tokens_per_minute:
                    need, freed, wait = used + inflight - rule.tokens_per_minute + 1, 0, 1.0
                    for t, n in window:
                        freed += n
                        if freed >= need:
                            wait = t + 60.0 - now
                            break
                    found.append((wait, "rate_limit_tokens"))
            if rule.token_budget:
                start, end = period_bounds(rule.budget_period, now)
                spent = sum(n for t, n in settled if t >= start)
                if spent + inflight >= rule.token_budget:
                    found.append((end - now, "token_budget_exhausted"))
        return found


def optional(values: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
    return st.none() | values


rules = st.builds(
    LimitRule,
    requests_per_minute=optional(st.integers(1, 6)),
    tokens_per_minute=optional(st.integers(1, 400)),
    token_budget=optional(st.integers(1, 1500)),
    budget_period=st.sampled_from(["day", "month"]),
)


class LimiterAgainstModel(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        # No reservation outlives its TTL here; expiry has its own test.
        self.limits = Harness(self.backend, reservation_ttl=10**9)
        self.history = History()
        self.subjects: list[Subject] = []

    @initialize(key_rule=rules, workspace_rule=rules)
    def configure(self, key_rule: LimitRule, workspace_rule: LimitRule) -> None:
        self.subjects = [Subject("key", "k", key_rule), Subject("workspace", "w", workspace_rule)]

    @rule(which=st.sampled_from(["key", "workspace", "both"]), estimate=st.integers(0, 150))
    def admit(self, which: str, estimate: int) -> None:
        subjects = tuple(subject for subject in self.subjects if which in ("both", subject.kind))
        now = self.limits.clock.now
        breaches = self.history.breaches(subjects, now)
        try:
            reservation = self.limits.admit(*subjects, tokens=estimate)
        except RateLimited as error:
            assert breaches, f"refused without cause: {error.message}"
            longest = max(max(1, math.ceil(wait)) for wait, _ in breaches)
            assert error.retry_after == longest
            assert error.code in {code for wait, code in breaches if math.ceil(wait) == longest}
            return
        assert not breaches, f"admitted despite {breaches}"
        for subject in subjects:
            self.history.admitted.setdefault(subject.id, []).append(now)
        self.history.open.append(Open(reservation, subjects, estimate))

    @precondition(lambda self: self.history.open)
    @rule(data=st.data(), actual=st.integers(0, 150))
    def settle(self, data: st.DataObject, actual: int) -> None:
        call = self.history.open.pop(data.draw(st.integers(0, len(self.history.open) - 1)))
        self.limits.settle(call.reservation, actual)
        for subject in call.subjects:
            self.history.settled.setdefault(subject.id, []).append((self.limits.clock.now, actual))

    @rule(seconds=st.floats(0, 90, allow_nan=False) | st.sampled_from([0.5, 1.0, 59.0, 60.0]))
    def wait(self, seconds: float) -> None:
        self.limits.clock.advance(seconds)

    @rule()
    def wait_for_midnight(self) -> None:
        now = self.limits.clock.now
        self.limits.clock.now = max(now, period_bounds("day", now)[1] - 0.5)

    @invariant()
    def no_window_holds_more_than_the_limit(self) -> None:
        for subject in self.subjects:
            limit = subject.rule.requests_per_minute
            times = self.history.admitted.get(subject.id, [])
            if limit is None:
                continue
            for end in times:  # the fullest window ends at an admission
                assert sum(1 for t in times if end - 60.0 < t <= end) <= limit

    def teardown(self) -> None:
        self.limits.close()


class RedisLimiterAgainstModel(LimiterAgainstModel):
    backend = "redis"


def test_the_in_process_limiter_matches_the_model() -> None:
    run_state_machine_as_test(
        LimiterAgainstModel,
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
    )


@pytest.mark.skipif(bool(REDIS_MISSING), reason=REDIS_MISSING or "-")
def test_the_redis_limiter_matches_the_model() -> None:
    run_state_machine_as_test(
        RedisLimiterAgainstModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_model_would_catch_a_limiter_that_admits_too_much() -> None:
    """The state machine fails on a limiter that is off by one."""

    class Lenient(InProcessLimiter):
        async def admit(self, subjects: Any, estimated_tokens: int = 0) -> Reservation:
            try:
                return await super().admit(subjects, estimated_tokens)
            except RateLimited:
                loose = [
                    Subject(s.kind, s.id, LimitRule(requests_per_minute=10**6)) for s in subjects
                ]
                return await super().admit(loose, estimated_tokens)

    class Broken(LimiterAgainstModel):
        def __init__(self) -> None:
            super().__init__()
            self.limits.limiter = Lenient(self.limits.clock, reservation_ttl=10**9)

    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            Broken,
            settings=settings(
                max_examples=200, deadline=None, database=None, phases=[Phase.generate]
            ),
        )
