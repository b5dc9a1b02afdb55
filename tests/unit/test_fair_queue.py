import asyncio

import pytest

from enclave.errors import QueueFull
from enclave.providers.scheduling import FairQueue


async def drain(queue: FairQueue[str], count: int) -> list[str]:
    return [await queue.get() for _ in range(count)]


def test_tenants_take_turns() -> None:
    async def scenario() -> list[str]:
        queue: FairQueue[str] = FairQueue(100)
        for index in range(4):
            queue.put_nowait("greedy", f"g{index}")
        queue.put_nowait("polite", "p0")
        queue.put_nowait("other", "o0")
        return await drain(queue, 6)

    order = asyncio.run(scenario())
    # The one-request tenants are served before the greedy one's backlog.
    assert order[:3] == ["g0", "p0", "o0"]
    assert order[3:] == ["g1", "g2", "g3"]


def test_full_queue_raises_with_retry_after() -> None:
    queue: FairQueue[str] = FairQueue(2)
    queue.put_nowait("a", "1")
    queue.put_nowait("b", "2")
    with pytest.raises(QueueFull) as info:
        queue.put_nowait("c", "3")
    assert info.value.status_code == 429
    assert int(info.value.headers["Retry-After"]) >= 1


def test_discard_removes_waiting_items() -> None:
    queue: FairQueue[str] = FairQueue(10)
    queue.put_nowait("a", "1")
    queue.put_nowait("a", "2")
    assert queue.discard("1")
    assert not queue.discard("missing")
    assert len(queue) == 1
    assert asyncio.run(queue.get()) == "2"


def test_get_waits_for_a_put() -> None:
    async def scenario() -> str:
        queue: FairQueue[str] = FairQueue(10)
        getter = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        queue.put_nowait("a", "late")
        return await asyncio.wait_for(getter, 1)

    assert asyncio.run(scenario()) == "late"


def test_cancelled_getter_does_not_swallow_an_item() -> None:
    async def scenario() -> str:
        queue: FairQueue[str] = FairQueue(10)
        first = asyncio.create_task(queue.get())
        second = asyncio.create_task(queue.get())
        await asyncio.sleep(0.01)
        first.cancel()
        queue.put_nowait("a", "item")
        return await asyncio.wait_for(second, 1)

    assert asyncio.run(scenario()) == "item"
