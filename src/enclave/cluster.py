"""Replicas of one control plane: who is running, by heartbeats in the shared database.

Each ``enclave serve`` process is a *replica* with an id (``cluster.replica_id``
or the host name and a random suffix). :class:`Membership` upserts a row in
``cluster_members`` every ``cluster.heartbeat_s`` seconds on its own thread.
A replica whose heartbeat is older than ``cluster.member_timeout_s`` is dead:
others take over what it left (its requests in flight become ``interrupted``
audit entries, see ``gateway/audit.py``; its ingestion jobs are picked up
when their leases lapse, see ``knowledge/jobs.py``). On a clean stop the row
is deleted at once, so nothing waits for the timeout.

Nothing here is needed by a single server, which is a cluster of one.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from enclave.storage.models import ClusterMemberRow

log = logging.getLogger(__name__)


def new_replica_id(configured: str | None = None) -> str:
    """``configured``, or this host's name and a random suffix (unique per process start)."""
    if configured:
        return configured
    return f"{socket.gethostname()[:48]}-{secrets.token_hex(4)}"


class Membership:
    """This replica's heartbeat, and what the others' heartbeats say."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        replica_id: str,
        *,
        heartbeat_s: float = 5.0,
        member_timeout_s: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self.replica_id = replica_id
        self.heartbeat_s = heartbeat_s
        self.member_timeout_s = member_timeout_s
        # Called after every heartbeat on the heartbeat thread (e.g. the audit log's sweep).
        self._after_beat: list[Callable[[], object]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_beat(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the heartbeat thread after every heartbeat."""
        self._after_beat.append(callback)

    def start(self) -> None:
        """Register now (so others see this replica at once) and beat until ``close``."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Record that this replica is alive (insert or update its row)."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            found = session.execute(
                update(ClusterMemberRow)
                .where(ClusterMemberRow.replica == self.replica_id)
                .values(heartbeat_at=now)
            )
            if found.rowcount == 0:  # type: ignore[attr-defined]
                session.add(
                    ClusterMemberRow(
                        replica=self.replica_id,
                        host=socket.gethostname()[:255],
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

    def live(self) -> list[str]:
        """The replicas heard from within ``member_timeout_s`` (this one included)."""
        since = datetime.now(UTC) - timedelta(seconds=self.member_timeout_s)
        with self._sessions() as session:
            rows = session.scalars(
                select(ClusterMemberRow.replica).where(ClusterMemberRow.heartbeat_at >= since)
            ).all()
        return sorted({*rows, self.replica_id})

    def members(self) -> list[dict[str, object]]:
        """Every registered replica with its host, start, last heartbeat and whether it is live."""
        since = datetime.now(UTC) - timedelta(seconds=self.member_timeout_s)
        with self._sessions() as session:
            rows = session.scalars(select(ClusterMemberRow).order_by(ClusterMemberRow.replica))
            return [
                {
                    "replica": row.replica,
                    "host": row.host,
                    "started_at": row.started_at.isoformat(),
                    "heartbeat_at": row.heartbeat_at.isoformat(),
                    "live": row.heartbeat_at >= since,
                    "self": row.replica == self.replica_id,
                }
                for row in rows
            ]

    def close(self) -> None:
        """Stop beating and leave: others stop waiting for this replica at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.heartbeat_s + 5)
        try:
            with self._sessions.begin() as session:
                session.execute(
                    delete(ClusterMemberRow).where(ClusterMemberRow.replica == self.replica_id)
                )
        except Exception as exc:  # the row times out instead
            log.warning("cluster: could not leave (%s)", type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # the database is down: try again next beat
                log.warning("cluster: heartbeat failed (%s)", type(exc).__name__)
                continue
            for callback in self._after_beat:
                try:
                    callback()
                except Exception as exc:
                    log.error("cluster: after heartbeat: %s", exc)
