"""Request and token limits per API key and per workspace.

Every token-spending call (streaming included) passes through
:meth:`Limiter.admit` before it reaches a provider and through
:meth:`Limiter.settle` when it ends. ``admit`` checks each
:class:`Subject` (the key, its workspace) against its :class:`LimitRule` and
either raises :class:`~enclave.errors.RateLimited` (HTTP 429 with
``Retry-After``) or counts the request and returns a :class:`Reservation`.
``settle`` replaces the reservation's token estimate with the tokens the call
actually spent (prompt + completion). The caller settles in a ``finally``
block; :meth:`Limiter.release` is ``settle(reservation, 0)`` for a call that
never reached a provider.

The three limits, for one subject (a key or a workspace):

``requests_per_minute = N``
    At most N admitted requests in any sliding 60-second window, kept as an
    exact log of admission times: a request admitted at ``t`` counts until
    ``t + 60`` s. Request N+1 inside the window is refused with code
    ``rate_limit_requests``; ``Retry-After`` is the whole number of seconds
    (rounded up, at least 1) until the oldest counted request leaves the
    window, i.e. until a retry would be admitted. Refused requests are not
    counted.

``tokens_per_minute = T``
    A call's tokens are known only when it ends, so they count from the
    moment they are settled, for 60 s. A request is refused (code
    ``rate_limit_tokens``) when the tokens settled in the last 60 s plus the
    estimates of the subject's calls still in flight already reach T. The new
    request's own estimate is not part of the check, so one request, or
    several admitted together, may overshoot T; the overshoot then holds
    later requests back until it leaves the window. ``Retry-After`` is the
    time until enough settled tokens leave the window for the sum to drop
    below T; when the in-flight estimates alone reach T it is 1 s, because
    when they settle (usually for less than estimated) is unknown.

``token_budget = B`` per ``budget_period`` (``day`` or ``month``)
    Periods are UTC calendar days and months (a month budget resets at
    00:00 UTC on the 1st). Tokens count in the period in which they are
    settled. A request is refused (code ``token_budget_exhausted``) when the
    tokens settled this period plus the in-flight estimates reach B;
    ``Retry-After`` is the number of seconds until the period ends. As with
    tokens per minute, the last admitted request may overshoot B.

All-or-nothing: ``admit`` checks every subject before it counts anything, so
a request the workspace refuses does not use up the key's allowance. When
several limits refuse, the error names the one with the longest wait and
``Retry-After`` is that wait: retrying sooner would be refused again.

Estimates and reservations. ``admit`` adds the caller's token estimate to
each subject's in-flight total; ``settle`` removes it and counts the actual
tokens. ``settle`` is idempotent. A reservation that is never settled (a bug
or a crashed replica) gives its estimate back after ``reservation_ttl``
seconds (15 minutes by default); settling it later still counts its actual
tokens. Set the TTL above the longest call you serve.

Start-up. :meth:`Limiter.seed_budget` loads the tokens a subject already
spent this period (from the usage ledger), so a restart does not reset
budgets. It raises the subject's count to at least that figure and never
lowers it, so seeding twice, or after traffic has already been counted, does
not double-count. A seed counts for the period that contains the moment of
seeding and lapses when that period ends.

Memory. A subject's request log holds at most N entries and its token log the
settlements of the last 60 s; both are trimmed whenever the subject is
checked. Subjects with nothing left in either window, no calls in flight and
no budget spent in the current period are forgotten. The in-process limiter
sweeps once a minute; Redis expires idle keys itself.

Backends. :class:`InProcessLimiter` keeps the state in this process: exact,
a few microseconds per call, and right for one replica. It is not
thread-safe and does not need to be: it is called from one asyncio loop and
never awaits between checking and counting. :class:`RedisLimiter` keeps the
same state in Redis for several replicas; admit and settle are each one Lua
script, so one round trip and atomic across processes. It reads time from
the replica's clock, so replicas' clocks should agree (NTP) to well under a
second. On Redis Cluster every subject's keys must share a slot: give a
prefix with a hash tag, such as ``{enclave}:limits:``. :func:`limiter_from_url`
picks the backend from the ``limiter_url`` setting.

Failing closed. With several replicas the limits hold only if every replica
counts in the same Redis, so a replica that cannot reach it admits nothing:
``admit`` raises :class:`~enclave.errors.ServiceUnavailable` (HTTP 503, code
``limiter_unavailable``, ``Retry-After: 1``), never a silent pass. A Redis that
is down refuses connections at once; one that hangs is given up on after
:data:`REDIS_TIMEOUT_S` (a ``socket_timeout`` in the URL's query overrides
it). The client reconnects by itself, so requests are admitted again as soon
as Redis is back, with no restart. Redis without persistence forgets the
counts when it restarts: the windows start again, and budgets count from zero
until the next seeding (:meth:`Limiter.seed_budget`, at a replica's start).
A failed ``settle`` is logged by the caller; its reservation's estimate then
lapses after ``reservation_ttl``.
"""

from __future__ import annotations

import abc
import itertools
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from enclave.errors import ConfigError, RateLimited, ServiceUnavailable

if TYPE_CHECKING:
    import redis.asyncio

WINDOW = 60.0
"""Seconds in the sliding window of the per-minute limits."""

REDIS_TIMEOUT_S = 2.0
"""Seconds a Redis command or connection may take before the request fails closed."""

DEFAULT_RESERVATION_TTL = 900.0
"""Seconds after which an unsettled reservation gives its estimate back."""

SWEEP_INTERVAL = 60.0
"""How often the in-process limiter expires reservations and forgets idle subjects."""

Clock = Callable[[], float]

_REQUESTS, _TOKENS, _BUDGET = 1, 2, 3
_CODES = {
    _REQUESTS: "rate_limit_requests",
    _TOKENS: "rate_limit_tokens",
    _BUDGET: "token_budget_exhausted",
}


@dataclass(frozen=True, slots=True)
class LimitRule:
    """The limits of one key or workspace; ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    token_budget: int | None = None
    budget_period: Literal["day", "month"] = "month"

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "token_budget"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or unset, not {value}")
        if self.budget_period not in ("day", "month"):
            raise ValueError(f"budget_period must be 'day' or 'month', not {self.budget_period!r}")

    @property
    def empty(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.token_budget is None
        )


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a limit applies to: an API key (by id) or a workspace (by name)."""

    kind: Literal["key", "workspace"]
    id: str
    rule: LimitRule


@dataclass(slots=True)
class Reservation:
    """An admitted request, to be settled exactly once when it ends.

    ``token`` identifies the reservation in the backend and ``handle`` is the
    backend's private bookkeeping.
    """

    subjects: tuple[Subject, ...]
    estimated_tokens: int
    token: str = ""
    admitted_at: float = 0.0
    settled: bool = False
    handle: Any = field(default=None, repr=False, compare=False)


class Limiter(abc.ABC):
    """Where limits are kept. See the module docstring for the exact semantics."""

    @abc.abstractmethod
    async def admit(self, subjects: Sequence[Subject], estimated_tokens: int = 0) -> Reservation:
        """Check every subject; raise RateLimited or count the request (all-or-nothing).

        The error carries the longest of the refusing limits' waits as
        ``Retry-After`` and a message naming that limit, e.g. "workspace
        'research' exceeded 60 requests per minute".
        """

    @abc.abstractmethod
    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Record the tokens actually spent (prompt + completion), replacing the estimate.

        Settling a reservation a second time does nothing.
        """

    async def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call spent no tokens."""
        await self.settle(reservation, 0)

    @abc.abstractmethod
    async def seed_budget(
        self, subject_kind: str, subject_id: str, tokens_this_period: int
    ) -> None:
        """Load tokens already spent this period, so a restart does not reset budgets."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release the backend's resources."""


def period_bounds(period: str, at: float) -> tuple[float, float]:
    """Start and end (POSIX seconds) of the UTC calendar day or month containing ``at``."""
    moment = datetime.fromtimestamp(at, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = start + timedelta(days=1)
    else:
        start = start.replace(day=1)
        if start.month == 12:
            end = start.replace(year=start.year + 1, month=1)
        else:
            end = start.replace(month=start.month + 1)
    return start.timestamp(), end.timestamp()


class _Calendar:
    """``period_bounds`` for the current day and month, recomputed only when they pass."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, float]] = {}

    def bounds(self, period: str, now: float) -> tuple[float, float]:
        cached = self._cache.get(period)
        if cached is None or not cached[0] <= now < cached[1]:
            cached = self._cache[period] = period_bounds(period, now)
        return cached


def limiter_unreachable() -> ServiceUnavailable:
    """The 503 of a limiter that cannot count: nothing is admitted without it."""
    return ServiceUnavailable(
        "Service unavailable: the rate limiter's store (Redis, limiter_url) cannot be "
        "reached, so no request is admitted until it is back. Retry shortly.",
        code="limiter_unavailable",
        headers={"Retry-After": "1"},
    )


def _refusal(subject: Subject, limit: int, wait: float) -> RateLimited:
    rule = subject.rule
    name = f"{subject.kind} '{subject.id}'"
    if limit == _REQUESTS:
        message = f"{name} exceeded {rule.requests_per_minute} requests per minute"
    elif limit == _TOKENS:
        message = f"{name} exceeded {rule.tokens_per_minute} tokens per minute"
    else:
        message = (
            f"{name} used up its token budget of {rule.token_budget} tokens "
            f"per {rule.budget_period}"
        )
    return RateLimited(message, retry_after=max(1, math.ceil(wait)), code=_CODES[limit])


# -- in process ---------------------------------------------------------------------


class _SubjectState:
    """Everything the in-process limiter knows about one key or workspace."""

    __slots__ = (
        "inflight",
        "open",
        "period",
        "period_end",
        "period_start",
        "requests",
        "settled_at",
        "settled_sum",
        "settled_tokens",
        "spent",
        "spent_at",
    )

    def __init__(self) -> None:
        self.requests: deque[float] = deque()  # admission times, oldest first
        # Settlements in the token window as two parallel logs (no tuple per entry).
        self.settled_at: deque[float] = deque()
        self.settled_tokens: deque[int] = deque()
        self.settled_sum = 0  # sum of ``settled_tokens``
        self.inflight = 0  # estimates of open reservations
        self.open = 0  # open reservations; the state is kept while any is
        self.spent = 0  # budget tokens counted in [period_start, period_end)
        self.spent_at = -math.inf
        self.period: str | None = None
        self.period_start = math.inf
        self.period_end = -math.inf


class InProcessLimiter(Limiter):
    """Limits kept in this process: exact, for a single replica."""

    def __init__(
        self,
        clock: Clock = time.time,
        *,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
    ) -> None:
        self._clock = clock
        self._reservation_ttl = reservation_ttl
        self._states: dict[tuple[str, str], _SubjectState] = {}
        self._open: dict[int, Reservation] = {}  # by id(); insertion order is admission order
        self._calendar = _Calendar()
        self._next_sweep = -math.inf

    @property
    def tracked_subjects(self) -> int:
        """How many subjects the limiter holds state for (bounded by the idle sweep)."""
        return len(self._states)

    async def admit(self, subjects: Sequence[Subject], estimated_tokens: int = 0) -> Reservation:
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        cutoff = now - WINDOW
        states = self._states
        held: list[tuple[_SubjectState, LimitRule]] = []
        worst: tuple[float, Subject, int] | None = None
        for subject in subjects:
            rule = subject.rule
            rpm = rule.requests_per_minute
            tpm = rule.tokens_per_minute
            budget = rule.token_budget
            if rpm is None and tpm is None and budget is None:
                continue
            key = (subject.kind, subject.id)
            state = states.get(key)
            if state is None:
                state = states[key] = _SubjectState()
            held.append((state, rule))
            if rpm is not None:
                log = state.requests
                while log and log[0] <= cutoff:
                    log.popleft()
                if len(log) >= rpm:
                    wait = log[len(log) - rpm] + WINDOW - now
                    if worst is None or wait > worst[0]:
                        worst = (wait, subject, _REQUESTS)
            if tpm is not None:
                used = self._tokens_in_window(state, cutoff)
                if used + state.inflight >= tpm:
                    wait = self._tokens_wait(state, used + state.inflight - tpm + 1, now)
                    if worst is None or wait > worst[0]:
                        worst = (wait, subject, _TOKENS)
            if budget is not None:
                spent = self._spent(state, rule.budget_period, now)
                if spent + state.inflight >= budget:
                    wait = state.period_end - now
                    if worst is None or wait > worst[0]:
                        worst = (wait, subject, _BUDGET)
        if worst is not None:
            raise _refusal(worst[1], worst[2], worst[0])
        for state, rule in held:
            if rule.requests_per_minute is not None:
                state.requests.append(now)
            state.inflight += estimate
            state.open += 1
        reservation = Reservation(tuple(subjects), estimate, "", now, False, held)
        if held:
            self._open[id(reservation)] = reservation
        return reservation

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        held: list[tuple[_SubjectState, LimitRule]] | None = reservation.handle
        if not held:
            return
        now = self._clock()
        actual = actual_tokens if actual_tokens > 0 else 0
        if self._open.pop(id(reservation), None) is None:
            # Expired by the sweep: the estimate is already given back and the
            # states may have been forgotten, so count the tokens afresh.
            if actual:
                for subject in reservation.subjects:
                    rule = subject.rule
                    if rule.tokens_per_minute is not None or rule.token_budget is not None:
                        self._count(self._state(subject.kind, subject.id), rule, actual, now)
            return
        estimate = reservation.estimated_tokens
        for state, rule in held:
            state.inflight -= estimate
            state.open -= 1
            if actual:
                self._count(state, rule, actual, now)

    async def seed_budget(
        self, subject_kind: str, subject_id: str, tokens_this_period: int
    ) -> None:
        now = self._clock()
        state = self._state(subject_kind, subject_id)
        if state.period is None:
            # Nothing counted yet, or only an earlier seed: the ledger's figure is newer.
            state.spent = max(0, tokens_this_period)
            state.period_start, state.period_end = self._calendar.bounds("month", now)
        else:
            state.spent = max(self._spent(state, state.period, now), tokens_this_period)
        state.spent_at = now

    # The helpers below run on the hot path; they avoid calls they can.

    def _state(self, kind: str, subject_id: str) -> _SubjectState:
        state = self._states.get((kind, subject_id))
        if state is None:
            state = self._states[(kind, subject_id)] = _SubjectState()
        return state

    @staticmethod
    def _tokens_in_window(state: _SubjectState, cutoff: float) -> int:
        times = state.settled_at
        while times and times[0] <= cutoff:
            times.popleft()
            state.settled_sum -= state.settled_tokens.popleft()
        return state.settled_sum

    @staticmethod
    def _tokens_wait(state: _SubjectState, need: int, now: float) -> float:
        freed = 0
        for settled_at, tokens in zip(state.settled_at, state.settled_tokens, strict=True):
            freed += tokens
            if freed >= need:
                return settled_at + WINDOW - now
        return 1.0  # the in-flight estimates alone reach the limit

    def _spent(self, state: _SubjectState, period: str, now: float) -> int:
        """Budget tokens counted in the current period, rolling over when it has passed."""
        if state.period != period or not state.period_start <= now < state.period_end:
            state.period = period
            state.period_start, state.period_end = self._calendar.bounds(period, now)
            if state.spent_at < state.period_start:
                state.spent = 0
        return state.spent

    def _count(self, state: _SubjectState, rule: LimitRule, actual: int, now: float) -> None:
        if rule.tokens_per_minute is not None:
            state.settled_at.append(now)
            state.settled_tokens.append(actual)
            state.settled_sum += actual
        if rule.token_budget is not None:
            state.spent = self._spent(state, rule.budget_period, now) + actual
            state.spent_at = now

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        deadline = now - self._reservation_ttl
        expired = [ident for ident, res in self._open.items() if res.admitted_at <= deadline]
        for ident in expired:
            reservation = self._open.pop(ident)
            for state, _ in reservation.handle:
                state.inflight -= reservation.estimated_tokens
                state.open -= 1
        cutoff = now - WINDOW
        for key in [key for key, state in self._states.items() if _idle(state, now, cutoff)]:
            del self._states[key]


def _idle(state: _SubjectState, now: float, cutoff: float) -> bool:
    return (
        not state.open
        and not (state.requests and state.requests[-1] > cutoff)
        and not (state.settled_at and state.settled_at[-1] > cutoff)
        and not (state.spent and state.period_end > now)
    )


# -- Redis --------------------------------------------------------------------------

# Per subject, under ``<prefix><kind>:<id>:``:
#   req  zset  one member per admitted request (the reservation token), scored by time
#   tok  zset  "<token>:<tokens>" per settlement, scored by settle time
#   fly  zset  "<token>:<estimate>" per open reservation, scored by its expiry
#   st   hash  tokens (sum of tok), inflight (sum of fly), spent, spent_at, period
# The sums are kept as running totals so a check costs O(1) amortised. A zset
# that has expired or emptied resets its total, which keeps the two consistent.
_LUA_COMMON = """
local function amount(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

-- Drop the members of zset scored at or below upto, subtract what they carry
-- from st[field], and return what is left.
local function trim(zset, st, field, upto)
  local gone = redis.call('ZRANGEBYSCORE', zset, '-inf', upto)
  if #gone > 0 then
    local total = 0
    for i = 1, #gone do total = total + amount(gone[i]) end
    redis.call('ZREMRANGEBYSCORE', zset, '-inf', upto)
    redis.call('HINCRBY', st, field, string.format('%d', -total))
  end
  if redis.call('EXISTS', zset) == 0 then
    redis.call('HDEL', st, field)
    return 0
  end
  return tonumber(redis.call('HGET', st, field) or '0')
end

-- Budget tokens counted in the period starting at period_start.
local function spent_now(st, period_start)
  local fields = redis.call('HMGET', st, 'spent', 'spent_at')
  local spent = tonumber(fields[1] or '0')
  if spent > 0 and tonumber(fields[2] or '0') < period_start then
    redis.call('HDEL', st, 'spent')
    return 0
  end
  return spent
end

-- Keep st while a window or reservation may refer to it, and a budget to its period's end.
local function keep(st, now, ttl, window, budget, period_end)
  local ms = (ttl + window + 1) * 1000
  if budget > 0 then ms = math.max(ms, (period_end - now + window) * 1000) end
  redis.call('PEXPIRE', st, math.ceil(ms))
end
"""

# KEYS: req, tok, fly, st per subject.
# ARGV: now, cutoff, deadline, estimate, token, ttl, window,
#       then rpm, tpm, budget (0 = none), period, period start, period end per subject.
# Returns {limit, subject (1-based), seconds to wait}; limit 0 means admitted.
_ADMIT_LUA = (
    _LUA_COMMON
    + """
local now_s, cutoff_s, deadline_s = ARGV[1], ARGV[2], ARGV[3]
local now, cutoff = tonumber(now_s), tonumber(cutoff_s)
local estimate, token = ARGV[4], ARGV[5]
local ttl, window = tonumber(ARGV[6]), tonumber(ARGV[7])
local subjects = #KEYS / 4
local worst_limit, worst_subject, worst_wait = 0, 0, 0

local function breach(limit, subject, wait)
  if worst_limit == 0 or wait > worst_wait then
    worst_limit, worst_subject, worst_wait = limit, subject, wait
  end
end

for i = 1, subjects do
  local k, a = (i - 1) * 4, 7 + (i - 1) * 6
  local req, tok, fly, st = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local rpm, tpm, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', req, '-inf', cutoff_s)
    local count = redis.call('ZCARD', req)
    if count >= rpm then
      local entry = redis.call('ZRANGE', req, count - rpm, count - rpm, 'WITHSCORES')
      breach(1, i, tonumber(entry[2]) + window - now)
    end
  end
  if tpm > 0 or budget > 0 then
    local inflight = trim(fly, st, 'inflight', now_s)
    if tpm > 0 then
      local used = trim(tok, st, 'tokens', cutoff_s)
      if used + inflight >= tpm then
        local wait, freed, need = 1, 0, used + inflight - tpm + 1
        local entries = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
        for j = 1, #entries, 2 do
          freed = freed + amount(entries[j])
          if freed >= need then
            wait = tonumber(entries[j + 1]) + window - now
            break
          end
        end
        breach(2, i, wait)
      end
    end
    if budget > 0 then
      if spent_now(st, tonumber(ARGV[a + 5])) + inflight >= budget then
        breach(3, i, tonumber(ARGV[a + 6]) - now)
      end
    end
  end
end

if worst_limit > 0 then
  return {worst_limit, worst_subject, string.format('%.17g', worst_wait)}
end

for i = 1, subjects do
  local k, a = (i - 1) * 4, 7 + (i - 1) * 6
  local req, fly, st = KEYS[k + 1], KEYS[k + 3], KEYS[k + 4]
  local rpm, tpm, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm > 0 then
    redis.call('ZADD', req, now_s, token)
    redis.call('PEXPIRE', req, math.ceil((window + 1) * 1000))
  end
  if (tpm > 0 or budget > 0) and estimate ~= '0' then
    redis.call('ZADD', fly, deadline_s, token .. ':' .. estimate)
    redis.call('PEXPIRE', fly, math.ceil((ttl + window) * 1000))
    redis.call('HINCRBY', st, 'inflight', estimate)
  end
  keep(st, now, ttl, window, budget, tonumber(ARGV[a + 6]))
end
return {0, 0, 0}
"""
)

# KEYS: tok, fly, st per subject.
# ARGV: now, token, estimate, actual, ttl, window,
#       then tpm, budget (0 = none), period, period start, period end per subject.
_SETTLE_LUA = (
    _LUA_COMMON
    + """
local now_s, token, estimate, actual = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl, window = tonumber(now_s), tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 1, #KEYS / 3 do
  local k, a = (i - 1) * 3, 6 + (i - 1) * 5
  local tok, fly, st = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local tpm, budget = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if estimate ~= '0' and redis.call('ZREM', fly, token .. ':' .. estimate) == 1 then
    redis.call('HINCRBY', st, 'inflight', '-' .. estimate)
  end
  if actual ~= '0' then
    if tpm > 0 then
      if redis.call('EXISTS', tok) == 0 then redis.call('HDEL', st, 'tokens') end
      redis.call('ZADD', tok, now_s, token .. ':' .. actual)
      redis.call('PEXPIRE', tok, math.ceil((window + 1) * 1000))
      redis.call('HINCRBY', st, 'tokens', actual)
    end
    if budget > 0 then
      spent_now(st, tonumber(ARGV[a + 4]))
      redis.call('HINCRBY', st, 'spent', actual)
      redis.call('HSET', st, 'spent_at', now_s, 'period', ARGV[a + 3])
    end
  end
  keep(st, now, ttl, window, budget, tonumber(ARGV[a + 5]))
end
return 0
"""
)

# KEYS: st. ARGV: now, tokens, day start, month start, month end, window.
_SEED_LUA = """
local now_s, tokens = ARGV[1], tonumber(ARGV[2])
local fields = redis.call('HMGET', KEYS[1], 'spent', 'spent_at', 'period')
local spent, spent_at, period = tonumber(fields[1] or '0'), tonumber(fields[2] or '0'), fields[3]
if not period then
  spent = 0  -- nothing counted yet, or only an earlier seed: the ledger's figure is newer
elseif period == 'day' and spent_at < tonumber(ARGV[3]) then
  spent = 0
elseif period == 'month' and spent_at < tonumber(ARGV[4]) then
  spent = 0
end
if tokens > spent then spent = tokens end
redis.call('HSET', KEYS[1], 'spent', string.format('%d', spent), 'spent_at', now_s)
local ms = math.ceil((tonumber(ARGV[5]) - tonumber(now_s) + tonumber(ARGV[6])) * 1000)
if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
return 0
"""


class RedisLimiter(Limiter):
    """Limits shared by several replicas through Redis; admit and settle are one script each."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        prefix: str = "enclave:limits:",
        clock: Clock = time.time,
        *,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
    ) -> None:
        from redis.exceptions import RedisError

        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._reservation_ttl = reservation_ttl
        self._calendar = _Calendar()
        self._redis_error = RedisError
        self._admit_script = client.register_script(_ADMIT_LUA)
        self._settle_script = client.register_script(_SETTLE_LUA)
        self._seed_script = client.register_script(_SEED_LUA)
        # Reservation tokens: unique across replicas without coordination.
        self._node = os.urandom(6).hex()
        self._serial = itertools.count()
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLimiter:
        """A limiter with its own client for ``url``; ``close`` closes that client."""
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as error:
            raise ConfigError(
                "limiter_url points at Redis but the redis package is not installed; "
                "install it with: pip install 'enclave[redis]'"
            ) from error
        # Bounded waits: a Redis that hangs fails the request closed instead of holding it.
        client = redis_asyncio.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        limiter = cls(client, **options)
        limiter._owns_client = True
        return limiter

    def _base(self, subject_kind: str, subject_id: str) -> str:
        return f"{self._prefix}{subject_kind}:{subject_id}:"

    async def admit(self, subjects: Sequence[Subject], estimated_tokens: int = 0) -> Reservation:
        now = float(self._clock())
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        token = f"{self._node}{next(self._serial):x}"
        reservation = Reservation(tuple(subjects), estimate, token, now)
        active = [subject for subject in subjects if not subject.rule.empty]
        if not active:
            return reservation
        ttl = self._reservation_ttl
        keys: list[str] = []
        args: list[str | int | float] = [
            repr(now),
            repr(now - WINDOW),
            repr(now + ttl),
            str(estimate),
            token,
            ttl,
            WINDOW,
        ]
        for subject in active:
            base = self._base(subject.kind, subject.id)
            keys += (base + "req", base + "tok", base + "fly", base + "st")
            args += self._rule_args(subject.rule, now, with_requests=True)
        try:
            limit, index, wait = await self._admit_script(keys=keys, args=args)
        except self._redis_error as error:
            raise limiter_unreachable() from error
        if limit:
            raise _refusal(active[int(index) - 1], int(limit), float(wait))
        return reservation

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        spending = [
            subject
            for subject in reservation.subjects
            if subject.rule.tokens_per_minute is not None or subject.rule.token_budget is not None
        ]
        if not spending:
            return
        now = float(self._clock())
        keys: list[str] = []
        args: list[str | int | float] = [
            repr(now),
            reservation.token,
            str(reservation.estimated_tokens),
            str(actual_tokens if actual_tokens > 0 else 0),
            self._reservation_ttl,
            WINDOW,
        ]
        for subject in spending:
            base = self._base(subject.kind, subject.id)
            keys += (base + "tok", base + "fly", base + "st")
            args += self._rule_args(subject.rule, now, with_requests=False)
        try:
            await self._settle_script(keys=keys, args=args)
        except self._redis_error as error:
            raise limiter_unreachable() from error

    async def seed_budget(
        self, subject_kind: str, subject_id: str, tokens_this_period: int
    ) -> None:
        now = float(self._clock())
        day_start, _ = self._calendar.bounds("day", now)
        month_start, month_end = self._calendar.bounds("month", now)
        args: list[str | float] = [
            repr(now),
            str(max(0, tokens_this_period)),
            repr(day_start),
            repr(month_start),
            repr(month_end),
            WINDOW,
        ]
        try:
            await self._seed_script(keys=[self._base(subject_kind, subject_id) + "st"], args=args)
        except self._redis_error as error:
            raise limiter_unreachable() from error

    def _rule_args(self, rule: LimitRule, now: float, *, with_requests: bool) -> list[Any]:
        start, end = self._calendar.bounds(rule.budget_period, now)
        args: list[Any] = [rule.requests_per_minute or 0] if with_requests else []
        args += (rule.tokens_per_minute or 0, rule.token_budget or 0, rule.budget_period)
        args += (repr(start), repr(end))
        return args

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def limiter_from_url(url: str | None) -> Limiter:
    """The limiter for the ``limiter_url`` setting: unset means in-process."""
    if not url:
        return InProcessLimiter()
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisLimiter.from_url(url)
    # The URL may carry a password, so only its scheme goes into the message.
    raise ConfigError(
        f"limiter_url: unsupported scheme {scheme!r}; use redis://, rediss:// or unix://, "
        "or leave it unset for limits kept in this process"
    )
