"""Telling the other replicas that something they cache has changed: Postgres LISTEN/NOTIFY.

A change that other replicas may hold in a cache (a revoked key, a key's lowered
clearance) calls :func:`announce` in the transaction that makes it: Postgres
delivers the notification only when that transaction commits, to every
connection that listens on the channel, in commit order. Each replica runs one
:class:`ChangeListener` per channel on its own thread and connection, and drops
what the payload names from its cache.

Nothing is lost silently: when the listening connection breaks, notifications
sent meanwhile cannot be replayed, so the listener calls ``on_reset`` (drop the
whole cache) before it listens again. A cache's own short TTL still bounds
staleness if the listener is down for longer. On SQLite (one process, one
cache) :func:`announce` does nothing: the service that made the change has
already dropped it from its own cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# A key was revoked or its clearance changed; the payload is its id.
KEYS_CHANNEL = "enclave_keys"


def announce(session: Session, channel: str, payload: str) -> None:
    """Notify ``channel`` with ``payload`` when ``session``'s transaction commits (Postgres)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


def libpq_url(url: str | URL) -> str:
    """A SQLAlchemy Postgres URL (``postgresql+psycopg://…``) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """LISTEN on one channel on a dedicated connection; call ``on_message`` per payload.

    ``on_reset`` runs whenever notifications may have been missed: before the
    first LISTEN takes effect and after every reconnect.
    """

    def __init__(
        self,
        url: str | URL,
        channel: str,
        on_message: Callable[[str], object],
        on_reset: Callable[[], object],
        *,
        retry_s: float = 1.0,
    ) -> None:
        self._conninfo = libpq_url(url)
        self.channel = channel
        self._on_message = on_message
        self._on_reset = on_reset
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0

    def start(self, wait_s: float = 10.0) -> None:
        """Start listening; wait (bounded) until the first LISTEN is in force."""
        self._thread = threading.Thread(
            target=self._run, name=f"listen-{self.channel}", daemon=True
        )
        self._thread.start()
        if not self._listening.wait(wait_s):
            log.warning("listen %s: not listening yet; caches rely on their TTL", self.channel)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'LISTEN "{self.channel}"')
                    self._on_reset()  # whatever changed before this LISTEN was not heard
                    self._listening.set()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self._deliver(notice.payload)
            except Exception as exc:  # psycopg's, or anything else: never stop listening
                log.warning(
                    "listen %s: connection lost (%s); retrying in %.0f s",
                    self.channel,
                    type(exc).__name__,
                    self._retry_s,
                )
            finally:
                if self._listening.is_set() and not self._stop.is_set():
                    self.reconnects += 1
                self._listening.clear()
            self._stop.wait(self._retry_s)

    def _deliver(self, payload: str) -> None:
        try:
            self._on_message(payload)
        except Exception:  # one bad payload must not stop the listener
            log.exception("listen %s: handling a notification failed", self.channel)
