"""BatchWriter.commit: group commit, and failing closed when the write fails."""

from __future__ import annotations

import asyncio
import threading

import pytest

from enclave.storage.batch_writer import BatchWriter, CommitFailed


def test_waiting_commits_share_transactions_and_return_once_written() -> None:
    asyncio.run(_waiting_commits())


async def _waiting_commits() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def write(batch: list[int]) -> None:
        gate.wait(5)  # the first batch is slow: everything after it queues up
        batches.append(list(batch))

    writer: BatchWriter[int] = BatchWriter("test", write, flush_interval=60)
    writer.start()
    try:
        first = asyncio.create_task(writer.commit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(writer.commit(n)) for n in range(1, 33)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in [first, *rest])  # nothing returns unwritten
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    finally:
        writer.close(5)
    assert sorted(n for batch in batches for n in batch) == list(range(33))
    assert len(batches) == 2  # the 32 that waited went in one transaction


def test_a_failed_write_fails_its_waiters_and_keeps_the_fallback() -> None:
    asyncio.run(_failed_write())


async def _failed_write() -> None:
    written: list[str] = []
    failures = iter([True, False])

    def write(batch: list[str]) -> None:
        if next(failures, False):
            raise OSError("database is down")
        written.extend(batch)

    writer: BatchWriter[str] = BatchWriter("test", write, flush_interval=60, retry_initial=0.01)
    writer.start()
    try:
        with pytest.raises(CommitFailed):
            await asyncio.wait_for(writer.commit("answer", fallback="refused"), 5)
        writer.flush(5)  # the retry stores the record, as its fallback says
    finally:
        writer.close(5)
    assert written == ["refused"]


def test_commit_before_start_writes_inline_and_raises() -> None:
    asyncio.run(_inline())


async def _inline() -> None:
    def write(batch: list[int]) -> None:
        raise OSError("no database")

    writer: BatchWriter[int] = BatchWriter("test", write)
    with pytest.raises(CommitFailed):
        await writer.commit(1)
    assert writer.pending == 1  # kept for a retry
