"""A background writer that takes records from many threads and stores them in batches.

The audit log and the usage ledger both record one item per request, and the
request path must not wait for the database. ``BatchWriter.put`` appends to a
deque under a lock (O(1), never touches the database, never raises); one
daemon thread wakes every ``flush_interval`` seconds, or as soon as
``max_batch`` items are waiting or someone calls ``flush``, and hands the
oldest batch to the ``write`` callable, which stores it in one transaction.

A failed write is logged (the exception type and the driver's message, never
the records, whose contents may be confidential) and retried with exponential
backoff, so a locked or restarting database delays records but does not lose
them. Batches are written in order, so ``flush`` waits until the count of
written items reaches the count appended when it was called. Records can only
be lost when ``close`` gives up on an unreachable database, and then the
number lost is logged as an error.

Durable writes. ``await commit(*items)`` queues items and returns once the
batch holding them has committed: it wakes the thread at once rather than at
the next interval, and everything that arrives while a batch is being written
goes into the next one, so N waiting requests share one transaction (group
commit). Waiters are woken through their event loop as soon as the commit
returns, before ``after_write`` (the audit log's signed head) runs. When a
write fails, the waiters of that batch get ``CommitFailed`` at once (callers
fail closed) while the batch stays queued and is retried like any other; an
item given with a ``fallback`` is replaced by it in the retried batch, so the
stored record can say that its caller was told it failed.

Before ``start`` (in tests and in start-up code that reads the database
first) there is no thread: ``flush`` and ``commit`` write what is waiting in
the caller's thread, and a failure propagates (as ``CommitFailed`` from
``commit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommitFailed(Exception):
    """A durable write could not be committed; the records wait in the queue for a retry."""


class _Waiter:
    """An awaiting caller: its future, and what replaces its item if the write fails."""

    __slots__ = ("fallback", "future", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], fallback: object
    ) -> None:
        self.loop = loop
        self.future = future
        self.fallback = fallback


def _settle(waiters: list[_Waiter], failure: BaseException | None) -> None:
    # On the waiters' loop. A caller that was cancelled meanwhile has no one to tell.
    for waiter in waiters:
        if waiter.future.done():
            continue
        if failure is None:
            waiter.future.set_result(None)
        else:
            waiter.future.set_exception(failure)


def _wake_waiters(waiters: list[_Waiter], failure: BaseException | None) -> None:
    """One call into each loop for the whole batch, not one per waiter."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
    for waiter in waiters:
        by_loop.setdefault(waiter.loop, []).append(waiter)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, group, failure)


def describe_failure(exc: BaseException) -> str:
    """The exception type and the driver's first line, without SQL parameters.

    ``str()`` of an SQLAlchemy error includes the statement's parameters, which
    are the records themselves, so it is never logged.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        detail = str(exc.orig).splitlines()[0][:200] if str(exc.orig) else ""
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return type(exc).__name__


class BatchWriter(Generic[T]):
    """Collects items from any thread and writes them in batches on one thread."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], None],
        *,
        flush_interval: float = 0.25,
        max_batch: int = 1000,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        if flush_interval <= 0 or max_batch < 1:
            raise ValueError("flush_interval must be positive and max_batch at least 1")
        self.name = name
        self._write = write
        # Runs after each written batch, once its waiters are woken (a slow step that
        # durability does not need, like the audit log's signed head).
        self._after_write = after_write
        self._interval = flush_interval
        self._max_batch = max_batch
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits on this
        self._written = threading.Condition(self._lock)  # flush() waits on this
        self._queue: deque[T] = deque()
        # Waiters by the index (in append order) of the last item each waits for.
        self._waiters: dict[int, _Waiter] = {}
        self._taken = 0  # items taken off the queue (the index of the queue's head)
        self._appended = 0
        self._done = 0
        self._flush_waiters = 0
        self._stopping = False
        self._closed = False
        self._dropped_after_close = 0
        # Serialises writes between the thread and an inline flush before start().
        self._write_lock = threading.Lock()
        self._give_up = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Items appended but not yet written."""
        with self._lock:
            return self._appended - self._done

    def start(self) -> None:
        """Start the writer thread (once)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue one item. O(1), thread-safe, never blocks on the database, never raises."""
        try:
            with self._lock:
                if self._closed:
                    self._dropped_after_close += 1
                    dropped = self._dropped_after_close
                else:
                    self._queue.append(item)
                    self._appended += 1
                    if len(self._queue) >= self._max_batch:
                        self._wake.notify()
                    return
            if dropped == 1 or dropped % 1000 == 0:
                log.error(
                    "%s: %d record(s) arrived after close and were dropped", self.name, dropped
                )
        except Exception:  # pragma: no cover - only MemoryError-like failures get here
            log.error("%s: could not queue a record", self.name)

    async def commit(self, *items: T, fallback: T | None = None) -> None:
        """Queue ``items`` and return when the batch holding them has committed.

        Raises ``CommitFailed`` when that batch's write fails (the items stay
        queued and are retried; with a ``fallback``, it replaces the last item).
        Before ``start`` the items are written in this thread. Cancelling the
        caller does not take the items back.
        """
        if not items:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        thread = self._thread
        with self._lock:
            if self._closed:
                raise CommitFailed(f"{self.name}: closed")
            self._queue.extend(items)
            self._appended += len(items)
            self._waiters[self._appended - 1] = _Waiter(loop, future, fallback)
            self._wake.notify()
        if thread is None or not thread.is_alive():
            try:
                self._write_inline()
            except Exception as exc:
                raise CommitFailed(f"{self.name}: {describe_failure(exc)}") from exc
            return
        await future

    def flush(self, timeout: float | None = None) -> None:
        """Block until every item put so far is written.

        Raises ``TimeoutError`` when ``timeout`` passes first. Without a running
        thread, writes in this thread and lets a database error propagate.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._write_inline()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._appended
            self._flush_waiters += 1
            self._wake.notify()
            try:
                while self._done < target:
                    if not thread.is_alive() or self._give_up.is_set():
                        raise RuntimeError(f"{self.name}: the writer stopped with records pending")
                    wait = 0.5
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            raise TimeoutError(
                                f"{self.name}: {target - self._done} record(s) not yet written"
                            )
                    self._written.wait(wait)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and stop the thread.

        If the database stays unreachable for ``timeout`` seconds, give up and
        log how many records were lost.
        """
        with self._lock:
            self._closed = True
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is None:
            try:
                self._write_inline()
            except Exception as exc:
                log.error(
                    "%s: %d record(s) could not be written at close (%s)",
                    self.name,
                    self.pending,
                    describe_failure(exc),
                )
            return
        thread.join(timeout)
        if thread.is_alive():
            self._give_up.set()
            thread.join(1.0)
            with self._lock:
                stranded, self._waiters = list(self._waiters.values()), {}
            _wake_waiters(stranded, CommitFailed(f"{self.name}: closed before the write"))
            log.error(
                "%s: gave up after %.0f s; %d record(s) were not written",
                self.name,
                timeout,
                self.pending,
            )

    def _take_batch(self) -> list[T]:
        # Called with the lock held.
        count = min(len(self._queue), self._max_batch)
        self._taken += count
        return [self._queue.popleft() for _ in range(count)]

    def _batch_waiters(self, batch: list[T]) -> list[tuple[int, _Waiter]]:
        """(position in batch, waiter) for the batch just taken. Lock held."""
        if not self._waiters:
            return []
        first = self._taken - len(batch)
        return [
            (index - first, self._waiters.pop(index))
            for index in range(first, self._taken)
            if index in self._waiters
        ]

    def _mark_written(self, count: int) -> None:
        with self._lock:
            self._done += count
            self._written.notify_all()

    def _written_ok(self, count: int, waiters: list[tuple[int, _Waiter]]) -> None:
        if waiters:
            _wake_waiters([waiter for _, waiter in waiters], None)
        if self._after_write is not None:
            try:
                self._after_write()
            except Exception as exc:
                log.error("%s: after a write: %s", self.name, describe_failure(exc))
        self._mark_written(count)

    def _write_inline(self) -> None:
        with self._write_lock:
            while True:
                with self._lock:
                    batch = self._take_batch()
                    waiters = self._batch_waiters(batch)
                if not batch:
                    return
                try:
                    self._write(batch)
                except BaseException:
                    # Inline, the caller learns the outcome from the exception; the
                    # items go back to the queue (with their fallbacks) for a retry.
                    for position, waiter in waiters:
                        if waiter.fallback is not None:
                            batch[position] = waiter.fallback  # type: ignore[assignment]
                    with self._lock:
                        self._queue.extendleft(reversed(batch))
                        self._taken -= len(batch)
                    raise
                self._written_ok(len(batch), [])

    def _run(self) -> None:
        deadline = time.monotonic() + self._interval
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    queued = len(self._queue)
                    if queued and (
                        queued >= self._max_batch
                        or self._flush_waiters
                        or self._waiters
                        or self._stopping
                        or now >= deadline
                    ):
                        break
                    if not queued and self._stopping:
                        return
                    if now >= deadline:
                        deadline = now + self._interval
                    self._wake.wait(deadline - now)
                batch = self._take_batch()
                waiters = self._batch_waiters(batch)
            with self._write_lock:
                if not self._write_with_retry(batch, waiters):
                    return
                self._written_ok(len(batch), waiters)
            if not self._queue:
                deadline = time.monotonic() + self._interval

    def _write_with_retry(self, batch: list[T], waiters: list[tuple[int, _Waiter]]) -> bool:
        delay = self._retry_initial
        failures = 0
        while True:
            try:
                self._write(batch)
            except Exception as exc:
                failures += 1
                if failures == 1 and waiters:
                    # Fail closed now; the records stay in the batch and are retried.
                    _wake_waiters(
                        [waiter for _, waiter in waiters],
                        CommitFailed(f"{self.name}: {describe_failure(exc)}"),
                    )
                    for position, waiter in waiters:
                        if waiter.fallback is not None:
                            batch[position] = waiter.fallback  # type: ignore[assignment]
                    waiters.clear()
                log.error(
                    "%s: writing %d record(s) failed (%s); attempt %d, %d record(s) waiting, "
                    "retrying in %.2f s",
                    self.name,
                    len(batch),
                    describe_failure(exc),
                    failures,
                    self.pending,
                    delay,
                )
                if self._give_up.wait(delay):
                    return False
                delay = min(delay * 2, self._retry_max)
                continue
            if failures:
                log.warning("%s: write succeeded after %d failure(s)", self.name, failures)
            return True
