"""The scheduler (enclave.runners.placement): memory, clearance, engines, priority, keep_alive.

The property tests generate runner sets, deployment sets and sequences of
changes (runners join and leave, deployments are added and removed, models
are used, time passes) and check after every plan that no device is over
its memory, no replica is on an uncleared runner or one without its engine,
first-fit decreasing left no room for a deployment still short of replicas,
and only idle replicas of lower priority were evicted.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.runners.placement import (
    EPSILON_GB,
    Decision,
    Deployment,
    Device,
    Plan,
    Replica,
    Runner,
    cleared,
    memory_report,
    plan,
    priority_rank,
    unplaced_reason,
)

CLASSES = ["public", "internal", "confidential", "secret"]
ENGINES = ["llamacpp", "vllm", "llama-server", "sentence-transformers"]
MODELS = [f"m{i}" for i in range(8)]


def cpu(name: str, memory: float, clearance: str = "secret", **kw: object) -> Runner:
    return Runner(name, (Device("cpu", memory),), frozenset({"llamacpp"}), clearance, **kw)  # type: ignore[arg-type]


def dep(model: str, memory: float, **kw: object) -> Deployment:
    fields: dict[str, object] = {"engine": "llamacpp", "clearance": "public", **kw}
    return Deployment(model=model, memory_gb=memory, **fields)  # type: ignore[arg-type]


def kinds(result: Plan) -> list[tuple[str, str, str | None]]:
    return [(d.kind, d.model, d.runner) for d in result.decisions]


# --- examples ---------------------------------------------------------------------------


def test_replicas_spread_over_runners_and_pack_by_memory() -> None:
    runners = [cpu("a", 16), cpu("b", 16), cpu("c", 16)]
    deployments = [dep("big", 12), dep("small", 4, replicas=2), dep("mid", 8)]
    result = plan(runners, deployments, classes=CLASSES, now=0)
    assert kinds(result) == [
        ("place", "big", "a"),
        ("place", "mid", "b"),
        ("place", "small", "a"),
        ("place", "small", "b"),
    ]
    assert [r.used_gb() for r in result.runners] == [16, 12, 0]
    assert result.unavailable == {}


def test_never_on_an_uncleared_runner_or_without_the_engine() -> None:
    runners = [
        cpu("internal-box", 64, clearance="internal"),
        Runner("gpu", (Device("gpu0", 80),), frozenset({"vllm"}), "secret"),
    ]
    result = plan(runners, [dep("conf", 4, clearance="confidential")], classes=CLASSES, now=0)
    assert kinds(result) == [("unplaced", "conf", None)]
    assert "cleared for confidential" in result.unavailable["conf"]
    result = plan(runners, [dep("v", 4, engine="vllm", clearance="secret")], classes=CLASSES, now=0)
    assert kinds(result) == [("place", "v", "gpu")]
    assert not cleared("secret", "top", CLASSES) and not cleared("top", "public", CLASSES)


def test_high_priority_evicts_an_idle_low_priority_replica_but_not_a_busy_one() -> None:
    low = Replica("low", "cpu", 10, "low", last_used=0)
    runners = [cpu("a", 16, replicas=(low,))]
    deployments = [dep("low", 10, priority="low"), dep("high", 10, priority="high")]
    result = plan(runners, deployments, classes=CLASSES, now=100)
    assert kinds(result) == [
        ("evict", "low", "a"),
        ("place", "high", "a"),
        ("unplaced", "low", None),
    ]
    assert "every eligible runner is full" in result.unavailable["low"]

    busy = [cpu("a", 16, replicas=(replace(low, in_flight=1),))]
    result = plan(busy, deployments, classes=CLASSES, now=100)
    assert kinds(result) == [("unplaced", "high", None)]
    assert result.runners[0].replicas == (replace(low, in_flight=1),)

    same = [cpu("a", 16, replicas=(replace(low, priority="normal"),))]
    result = plan(same, [dep("low", 10), dep("n2", 10)], classes=CLASSES, now=100)
    assert kinds(result) == [("unplaced", "n2", None)]


def test_keep_alive_loads_on_first_use_and_time_shares_a_runner() -> None:
    runners = [cpu("a", 16)]
    deployments = [dep("x", 10, keep_alive_s=600), dep("y", 10, keep_alive_s=600)]
    result = plan(runners, deployments, classes=CLASSES, now=0)
    assert result.decisions == () and result.unavailable == {}

    result = plan(runners, deployments, classes=CLASSES, now=0, demand={"x"})
    assert kinds(result) == [("place", "x", "a")]
    # y is asked for while x is still within keep_alive: no room, same priority.
    result = plan(result.runners, deployments, classes=CLASSES, now=300, demand={"y"})
    assert kinds(result) == [("unplaced", "y", None)]
    # After x has been idle for its keep_alive, it makes way.
    result = plan(result.runners, deployments, classes=CLASSES, now=601, demand={"y"})
    assert kinds(result) == [("unload", "x", "a"), ("place", "y", "a")]
    assert "keep_alive" in result.decisions[0].reason
    # A busy replica is not unloaded, however long ago it started.
    busy = [
        replace(result.runners[0], replicas=(replace(result.runners[0].replicas[0], in_flight=1),))
    ]
    assert plan(busy, deployments, classes=CLASSES, now=10_000).decisions == ()


def test_a_runner_that_leaves_gets_its_replicas_placed_elsewhere_or_reported() -> None:
    deployments = [dep("m", 8, replicas=2)]
    first = plan([cpu("a", 8), cpu("b", 8), cpu("c", 8)], deployments, classes=CLASSES, now=0)
    assert kinds(first) == [("place", "m", "a"), ("place", "m", "b")]
    a, b, c = first.runners
    again = plan([replace(a, up=False), b, c], deployments, classes=CLASSES, now=1)
    assert kinds(again) == [("place", "m", "c")]
    only = plan(
        [replace(a, up=False), b, replace(c, up=False)], deployments, classes=CLASSES, now=1
    )
    assert kinds(only) == [("unplaced", "m", None)]
    assert "m" not in only.unavailable  # one replica still serves it
    none = plan([replace(r, up=False) for r in first.runners], deployments, classes=CLASSES, now=1)
    assert none.unavailable == {"m": "no runner is up to serve 'm'"}


def test_removed_changed_and_surplus_replicas_are_unloaded() -> None:
    replicas = (Replica("gone", "cpu", 2), Replica("m", "cpu", 2, last_used=5))
    runners = [cpu("a", 16, replicas=replicas), cpu("b", 16, replicas=(Replica("m", "cpu", 2),))]
    result = plan(runners, [dep("m", 2, replicas=1)], classes=CLASSES, now=10)
    assert kinds(result) == [("unload", "gone", "a"), ("unload", "m", "b")]
    result = plan(
        runners, [dep("m", 2, clearance="secret", engine="vllm")], classes=CLASSES, now=10
    )
    assert next(d.reason for d in result.decisions if d.model == "m").startswith("runner no longer")


def test_unplaced_reasons_name_the_cause() -> None:
    d = dep("m", 40)
    assert "no runner is up" in unplaced_reason(d, [], CLASSES)
    assert "vllm" in unplaced_reason(replace(d, engine="vllm"), [cpu("a", 8)], CLASSES)
    assert "largest device" in unplaced_reason(d, [cpu("a", 8)], CLASSES)
    text = "\n".join(str(x) for x in plan([cpu("a", 8)], [d], classes=CLASSES, now=0).decisions)
    assert (
        text == "unplaced m: 'm' needs 40 GB and the largest device of an eligible runner has 8 GB"
    )
    assert str(Decision("place", "m", "a", "cpu", "4 GB")) == "place    m on a/cpu: 4 GB"
    assert memory_report([cpu("a", 8, replicas=(Replica("m", "cpu", 4),))])[0].split() == [
        "a",
        "4.0",
        "/",
        "8.0",
        "GB",
        "m@cpu",
    ]


# --- properties ---------------------------------------------------------------------------

memories = st.sampled_from([1.0, 2.0, 3.0, 4.0, 6.0, 7.5, 8.0, 12.0, 20.0])
device_memories = st.sampled_from([4.0, 8.0, 12.0, 16.0, 24.0, 48.0])


@st.composite
def runners_st(draw: st.DrawFn, name: str) -> Runner:
    devices = tuple(Device(f"d{i}", draw(device_memories)) for i in range(draw(st.integers(1, 2))))
    engines = frozenset(draw(st.sets(st.sampled_from(ENGINES), min_size=1)))
    return Runner(name, devices, engines, draw(st.sampled_from(CLASSES)))


@st.composite
def deployments_st(draw: st.DrawFn, model: str) -> Deployment:
    return Deployment(
        model=model,
        engine=draw(st.sampled_from(ENGINES[:2])),
        memory_gb=draw(memories),
        clearance=draw(st.sampled_from(CLASSES)),
        replicas=draw(st.integers(1, 3)),
        priority=draw(st.sampled_from(["low", "normal", "high"])),
        keep_alive_s=draw(st.sampled_from([None, None, 60.0, 600.0])),
    )


def runner_sets() -> st.SearchStrategy[list[Runner]]:
    return st.integers(0, 5).flatmap(
        lambda n: st.tuples(*(runners_st(f"r{i}") for i in range(n))).map(list)
    )


def deployment_sets() -> st.SearchStrategy[list[Deployment]]:
    return st.sets(st.sampled_from(MODELS), max_size=6).flatmap(
        lambda names: st.tuples(*(deployments_st(m) for m in sorted(names))).map(list)
    )


def allowed(runner: Runner, d: Deployment) -> bool:
    """Eligibility restated here, so a bug in the module's own check cannot hide."""
    return (
        runner.up
        and d.engine in runner.engines
        and CLASSES.index(runner.clearance) >= CLASSES.index(d.clearance)
    )


def check(
    before: list[Runner], deployments: list[Deployment], result: Plan, demand: set[str]
) -> None:
    declared = {d.model: d for d in deployments}
    # No device (so no runner) over its memory; nothing uncleared or without its engine.
    for runner in result.runners:
        assert runner.up
        for device in runner.devices:
            assert runner.used_gb(device.name) <= device.memory_gb + EPSILON_GB
        spots = [(rep.model, rep.device) for rep in runner.replicas]
        assert len(spots) == len(set(spots)), "two replicas of one model on one device"
        for rep in runner.replicas:
            assert rep.model in declared
            assert allowed(runner, declared[rep.model])
    # Only replicas that were loaded are evicted or unloaded; evictions are of idle,
    # strictly lower-priority replicas, for a place on the same device.
    loaded = {(r.name, rep.device, rep.model): rep for r in before if r.up for rep in r.replicas}
    for index, decision in enumerate(result.decisions):
        if decision.kind in ("evict", "unload"):
            key = (decision.runner, decision.device, decision.model)
            assert key in loaded
        if decision.kind == "evict":
            victim = loaded[key]  # type: ignore[index]
            assert victim.idle
            after = next(
                d
                for d in result.decisions[index:]
                if d.kind == "place" and (d.runner, d.device) == (decision.runner, decision.device)
            )
            assert priority_rank(declared[after.model].priority) > priority_rank(victim.priority)
        if decision.kind == "unload" and "keep_alive" in decision.reason:
            assert loaded[key].idle  # type: ignore[index]
    # Busy replicas of declared deployments on eligible runners are kept.
    final = {(r.name, rep.device, rep.model) for r in result.runners for rep in r.replicas}
    by_name = {r.name: r for r in before}
    for (runner, device, model), rep in loaded.items():
        wanted = declared.get(model)
        if rep.in_flight and wanted and allowed(by_name[runner], wanted):
            surplus = sum(1 for k in loaded if k[2] == model) > wanted.replicas
            assert surplus or (runner, device, model) in final
    # First-fit decreasing leaves no room for a deployment still short of replicas.
    for d in deployments:
        have = [(r, rep) for r in result.runners for rep in r.replicas if rep.model == d.model]
        active = d.keep_alive_s is None or d.model in demand or have
        if not active or len(have) >= d.replicas:
            continue
        for runner in result.runners:
            if not allowed(runner, d):
                continue
            for device in runner.devices:
                if any(
                    rep.device == device.name and rep.model == d.model for rep in runner.replicas
                ):
                    continue
                assert runner.free_gb(device) + EPSILON_GB < d.memory_gb, (d, runner)
        assert len(have) == 0 or d.model not in result.unavailable
        if not have:
            assert result.unavailable[d.model] == unplaced_reason(d, result.runners, CLASSES)


@settings(max_examples=300, deadline=None)
@given(runner_sets(), deployment_sets(), st.sets(st.sampled_from(MODELS)))
def test_any_runner_and_deployment_set_gets_a_valid_plan(
    runners: list[Runner], deployments: list[Deployment], demand: set[str]
) -> None:
    result = plan(runners, deployments, classes=CLASSES, now=0, demand=demand)
    check(runners, deployments, result, demand)
    # Planning again with nothing changed decides nothing new (it is stable).
    again = plan(result.runners, deployments, classes=CLASSES, now=0, demand=demand)
    assert [d for d in again.decisions if d.kind != "unplaced"] == []


@settings(max_examples=300, deadline=None)
@given(runner_sets(), deployments_st("solo"))
def test_a_deployment_alone_is_placed_whenever_an_eligible_device_is_big_enough(
    runners: list[Runner], deployment: Deployment
) -> None:
    result = plan(runners, [deployment], classes=CLASSES, now=0, demand={"solo"})
    fits = any(
        allowed(r, deployment) and d.memory_gb >= deployment.memory_gb
        for r in runners
        for d in r.devices
    )
    placed = [d for d in result.decisions if d.kind == "place"]
    assert bool(placed) == fits
    assert ("solo" in result.unavailable) == (not fits)


change = st.one_of(
    st.tuples(st.just("join"), st.integers(0, 5)),
    st.tuples(st.just("leave"), st.integers(0, 5)),
    st.tuples(st.just("deploy"), st.sampled_from(MODELS)),
    st.tuples(st.just("remove"), st.sampled_from(MODELS)),
    st.tuples(st.just("use"), st.sampled_from(MODELS), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 30.0, 120.0, 700.0])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(change, min_size=1, max_size=25))
def test_sequences_of_changes_keep_every_plan_valid(data: st.DataObject, changes: list) -> None:
    now = 0.0
    runners: dict[str, Runner] = {}
    deployments: dict[str, Deployment] = {}
    for step in changes:
        demand: set[str] = set()
        kind = step[0]
        if kind == "join":
            name = f"r{step[1]}"
            if name not in runners or not runners[name].up:
                runners[name] = data.draw(runners_st(name))  # a fresh runner has nothing loaded
        elif kind == "leave" and f"r{step[1]}" in runners:
            runners[f"r{step[1]}"] = replace(runners[f"r{step[1]}"], up=False)
        elif kind == "deploy":
            deployments[step[1]] = data.draw(deployments_st(step[1]))
        elif kind == "remove":
            deployments.pop(step[1], None)
        elif kind == "use":
            model, in_flight = step[1], step[2]
            demand.add(model)
            for name, runner in runners.items():
                reps = tuple(
                    replace(rep, in_flight=in_flight, last_used=now) if rep.model == model else rep
                    for rep in runner.replicas
                )
                runners[name] = replace(runner, replicas=reps)
        elif kind == "wait":
            now += step[1]
        before = list(runners.values())
        result = plan(before, deployments.values(), classes=CLASSES, now=now, demand=demand)
        check(before, list(deployments.values()), result, demand)
        after = {r.name: r for r in result.runners}
        runners = {
            name: after.get(name, replace(runner, replicas=())) for name, runner in runners.items()
        }
