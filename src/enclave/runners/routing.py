"""Which replica of a deployment takes a request. A pure function.

:func:`pick_replica` sends a request to the least loaded healthy replica (by
queue depth), except that requests of one conversation stick to one replica
so that its KV cache (the prompt prefix already evaluated) is reused.

Affinity uses rendezvous hashing: each replica gets a score from a hash of
(prefix key, replica id) and the highest score wins. The same prefix thus
maps to the same replica for as long as that replica is healthy, and when a
replica leaves, only the conversations that were on it move. The affine
replica is taken while its queue is at most ``slack`` requests deeper than
the least loaded one; beyond that the request goes to the least loaded, since
a long wait costs more than re-evaluating a prompt.

:func:`prefix_key` makes the key from the first messages of a conversation
(the system prompt and the first user turn), which stay the same for every
later turn of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_SLACK = 2


@dataclass(frozen=True)
class ReplicaLoad:
    """A replica of one deployment as routing sees it."""

    id: str  # unique per replica, e.g. "runner/device"
    queue_depth: int
    healthy: bool = True


def prefix_key(messages: Iterable[str], count: int = 2) -> str:
    """A key for the conversation's first ``count`` messages (their text)."""
    digest = hashlib.sha256()
    for index, text in enumerate(messages):
        if index >= count:
            break
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def _score(key: str, replica_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()


def affine_replica(replicas: Sequence[ReplicaLoad], key: str) -> ReplicaLoad | None:
    """The healthy replica a prefix key belongs to (highest rendezvous score)."""
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        return None
    return max(healthy, key=lambda r: (_score(key, r.id), r.id))


def pick_replica(
    replicas: Sequence[ReplicaLoad], key: str | None = None, *, slack: int = DEFAULT_SLACK
) -> ReplicaLoad | None:
    """The replica for a request: None when no replica is healthy."""
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        return None
    least = min(healthy, key=lambda r: (r.queue_depth, r.id))
    if key is None:
        return least
    affine = affine_replica(healthy, key)
    if affine is not None and affine.queue_depth <= least.queue_depth + slack:
        return affine
    return least
