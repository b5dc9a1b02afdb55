"""Scale-out fixtures: one cluster for the session (Postgres with pgvector, Redis,
three `enclave serve` replicas, haproxy; see ``cluster.py``), and every replica up
and seen UP by haproxy before each test, whatever the previous test killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scale.cluster import Cluster, ClusterOptions, missing_binaries


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"tests/scale need {' and '.join(missing)} from Debian "
            f"(apt-get install {' '.join(sorted(set(missing)))})"
        )
    with Cluster(ClusterOptions(replicas=3)) as running:
        yield running


@pytest.fixture(autouse=True)
def all_replicas_up(cluster: Cluster) -> Cluster:
    cluster.ensure_all_up()
    return cluster


# The scenarios that kill replicas last, so that the restarts they leave behind are
# waited for as little as possible: each test waits for every replica first.
ORDER = ("test_shared_state", "test_ingestion", "test_chat_failover")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    positions = [i for i, item in enumerate(items) if item.path.parent == here]

    def rank(item: pytest.Item) -> int:
        return ORDER.index(item.path.stem) if item.path.stem in ORDER else len(ORDER)

    ours = sorted((items[i] for i in positions), key=rank)
    for position, item in zip(positions, ours, strict=True):
        item.add_marker(pytest.mark.model)  # the real embedding model, in every replica
        items[position] = item
