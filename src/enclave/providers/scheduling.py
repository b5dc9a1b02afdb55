"""A bounded queue that shares capacity fairly between tenants.

Each tenant (an API key) has its own FIFO; :meth:`FairQueue.get` takes from
tenants in rotation, so one client submitting fifty requests cannot starve
another submitting one. The total length is bounded: ``put_nowait`` raises
:class:`~enclave.errors.QueueFull` with a ``Retry-After`` estimated from the
recent service time, which the API turns into a 429.

It is an asyncio structure: producers are request handlers, consumers are the
slot workers of a model, all on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar

from enclave.errors import QueueFull

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, max_size: int, *, consumers: int = 1) -> None:
        self.max_size = max_size
        self._consumers = max(1, consumers)
        self._tenants: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        # Exponential moving average of how long one item takes to serve.
        self._service_seconds = 1.0

    def __len__(self) -> int:
        return self._size

    def put_nowait(self, tenant: str, item: T) -> None:
        if self._size >= self.max_size:
            wait = self._service_seconds * (self._size / self._consumers + 1)
            raise QueueFull(
                f"The model queue is full ({self._size} waiting, the limit). Retry later.",
                retry_after=wait,
            )
        self._tenants.setdefault(tenant, deque()).append(item)
        self._size += 1
        self._wake_one()

    async def get(self) -> T:
        while not self._size:
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the wake-up we consumed on
                raise
        tenant, items = next(iter(self._tenants.items()))
        item = items.popleft()
        del self._tenants[tenant]
        if items:
            self._tenants[tenant] = items  # back of the rotation
        self._size -= 1
        return item

    def discard(self, item: T) -> bool:
        """Remove an item that is still waiting (its client went away)."""
        for tenant, items in self._tenants.items():
            try:
                items.remove(item)
            except ValueError:
                continue
            self._size -= 1
            if not items:
                del self._tenants[tenant]
            return True
        return False

    def drain(self) -> list[T]:
        """Remove and return everything still waiting (at shutdown)."""
        items = [item for queue in self._tenants.values() for item in queue]
        self._tenants.clear()
        self._size = 0
        return items

    def record_service_time(self, seconds: float) -> None:
        self._service_seconds = 0.8 * self._service_seconds + 0.2 * max(seconds, 0.001)

    def _wake_one(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
