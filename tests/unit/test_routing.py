"""Routing fails closed: a plan never contains a target without clearance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.errors import InvalidRequest, ModelNotFound
from enclave.gateway.classification import Levels
from enclave.gateway.routing import Breaker, RoutingTable, Target, plan
from enclave.providers.base import Capabilities, ModelCard
from enclave.settings import Settings

LEVELS = Levels(["public", "internal", "confidential", "secret"])

targets_strategy = st.lists(
    st.builds(
        Target,
        provider=st.sampled_from(["a", "b", "c", "d"]),
        model=st.sampled_from(["m", "n"]),
        clearance=st.sampled_from(LEVELS.names),
        location=st.just("x"),
        preference=st.integers(0, 10),
    ),
    max_size=8,
)


@given(
    targets=targets_strategy,
    level=st.sampled_from(LEVELS.names),
    down=st.sets(st.sampled_from(["a", "b", "c", "d"])),
    busy=st.sets(st.sampled_from(["a", "b", "c", "d"])),
)
def test_a_plan_holds_only_cleared_targets_and_accounts_for_all(
    targets: list[Target], level: str, down: set[str], busy: set[str]
) -> None:
    result = plan(targets, level, LEVELS, is_down=down.__contains__, is_busy=busy.__contains__)
    for target in result.routes:
        assert LEVELS.rank[target.clearance] >= LEVELS.rank[level]
        assert target.provider not in down
    assert sorted(result.routes + tuple(t for t, _ in result.excluded), key=id) == sorted(
        targets, key=id
    )
    for target, reason in result.excluded:
        cleared = LEVELS.rank[target.clearance] >= LEVELS.rank[level]
        assert (not cleared) or target.provider in down, reason
    busy_flags = [target.provider in busy for target in result.routes]
    assert busy_flags == sorted(busy_flags), "idle providers come before busy ones"


def test_breaker_opens_after_failures_and_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = Breaker(threshold=2, cooldown=10, clock=lambda: now[0])
    breaker.failure()
    assert not breaker.is_down()
    breaker.failure()
    assert breaker.is_down() and breaker.state == "open"
    now[0] = 10.5
    assert breaker.state == "half-open" and not breaker.is_down()
    breaker.attempt()
    assert breaker.is_down(), "only one trial at a time"
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 21
    breaker.attempt()
    breaker.success()
    assert breaker.state == "closed" and not breaker.is_down()


class FakeProvider:
    def __init__(self, name: str, models: list[str]) -> None:
        self.name = name
        self._models = models

    def is_busy(self) -> bool:
        return False

    def models(self) -> list[ModelCard]:
        return [ModelCard(m, self.name, Capabilities(chat=True)) for m in self._models]


def table() -> RoutingTable:
    settings = Settings.model_validate(
        {
            "default_model": "fast",
            "providers": [
                {"name": "local", "type": "llamacpp", "models": [{"name": "m", "path": "x"}]},
                {
                    "name": "cloud",
                    "type": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "clearance": "internal",
                    "models": ["m", "big"],
                },
            ],
            "aliases": {"fast": ["cloud/big", "local/m"]},
        }
    )
    providers = [FakeProvider("local", ["m"]), FakeProvider("cloud", ["m", "big"])]
    return RoutingTable.build(settings, providers)  # type: ignore[arg-type]


def test_names_resolve_to_targets_in_preference_order() -> None:
    routing = table()
    assert [t.qualified for t in routing.candidates("m", "chat")] == ["local/m", "cloud/m"]
    assert [t.qualified for t in routing.candidates("cloud/m", "chat")] == ["cloud/m"]
    assert [t.qualified for t in routing.candidates("fast", "chat")] == ["cloud/big", "local/m"]
    assert [t.qualified for t in routing.candidates("default", "chat")] == [
        "cloud/big",
        "local/m",
    ]
    with pytest.raises(ModelNotFound):
        routing.candidates("nope", "chat")
    with pytest.raises(InvalidRequest):
        routing.candidates("m", "embeddings")


def test_confidential_requests_skip_the_uncleared_cloud() -> None:
    routing = table()
    result = routing.plan(routing.candidates("fast", "chat"), "confidential")
    assert [t.qualified for t in result.routes] == ["local/m"]
    assert [t.qualified for t, _ in result.excluded] == ["cloud/big"]
    assert routing.plan(routing.candidates("cloud/big", "chat"), "secret").routes == ()
