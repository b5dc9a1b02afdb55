"""Routing across replicas (enclave.runners.routing): least loaded, with prefix affinity."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.runners.routing import (
    DEFAULT_SLACK,
    ReplicaLoad,
    affine_replica,
    pick_replica,
    prefix_key,
)

replica_sets = st.lists(
    st.builds(
        ReplicaLoad,
        id=st.sampled_from([f"r{i}/gpu0" for i in range(8)]),
        queue_depth=st.integers(0, 20),
        healthy=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda r: r.id,
)
keys = st.one_of(st.none(), st.text(max_size=20).map(lambda t: prefix_key([t])))


@settings(max_examples=300, deadline=None)
@given(replica_sets, keys, st.integers(0, 5))
def test_the_pick_is_healthy_and_within_slack_of_the_least_loaded(
    replicas: list[ReplicaLoad], key: str | None, slack: int
) -> None:
    chosen = pick_replica(replicas, key, slack=slack)
    healthy = [r for r in replicas if r.healthy]
    if not healthy:
        assert chosen is None
        return
    assert chosen is not None and chosen.healthy
    least = min(r.queue_depth for r in healthy)
    assert chosen.queue_depth <= least + slack
    if key is None:
        assert chosen.queue_depth == least
    # Deterministic: the same replicas in another order give the same pick.
    assert pick_replica(list(reversed(replicas)), key, slack=slack) == chosen


@settings(max_examples=300, deadline=None)
@given(replica_sets, st.text(max_size=20), st.data())
def test_a_prefix_stays_on_its_replica_while_it_is_healthy(
    replicas: list[ReplicaLoad], text: str, data: st.DataObject
) -> None:
    key = prefix_key([text])
    home = affine_replica(replicas, key)
    if home is None:
        return
    # Within the slack, the conversation goes home whatever the others' load.
    calm = [ReplicaLoad(r.id, DEFAULT_SLACK if r.id == home.id else 0, r.healthy) for r in replicas]
    assert pick_replica(calm, key) == calm[replicas.index(home)]
    # Another replica leaving or failing does not move it (rendezvous hashing).
    others = [r for r in replicas if r.id != home.id]
    if others:
        gone = data.draw(st.sampled_from(others))
        rest = [r for r in replicas if r.id != gone.id]
        assert affine_replica(rest, key) == home
        sick = [ReplicaLoad(r.id, r.queue_depth, r.id != gone.id and r.healthy) for r in replicas]
        assert affine_replica(sick, key) == home
    # Too far behind the least loaded: the request goes elsewhere.
    swamped = [
        ReplicaLoad(r.id, DEFAULT_SLACK + 1 if r.id == home.id else 0, r.healthy) for r in replicas
    ]
    if any(r.healthy and r.id != home.id for r in replicas):
        assert pick_replica(swamped, key) != swamped[replicas.index(home)]


def test_conversations_spread_and_the_key_ignores_later_turns() -> None:
    replicas = [ReplicaLoad(f"r{i}", 0) for i in range(4)]
    homes = {pick_replica(replicas, prefix_key([f"system {n}", "hello"])) for n in range(64)}
    assert len(homes) == 4
    assert prefix_key(["s", "u1", "a1"]) == prefix_key(["s", "u1", "a2", "u2"])
    assert prefix_key(["s", "u1"]) != prefix_key(["s", "u2"])
    assert prefix_key(["ab", "c"]) != prefix_key(["a", "bc"])
