"""Placement of deployments on 3 CPU runners through a stream of changes.

Three CPU runners with declared memory (32, 16 and 16 GB; the third is
cleared only for internal data) and a scripted stream of changes: deployments
applied, models used, time passing, a runner leaving and coming back, a
deployment removed. After each change the scheduler
(:mod:`enclave.runners.placement`) runs, and this prints its decisions, the
memory used per runner, and the time the plan took:

    .venv/bin/python bench/runners_placement.py

No engines are loaded: the decisions are what the control plane would carry
out. The invariants are checked on every step (no runner over its memory, no
model on an uncleared runner), so a wrong plan stops the script.
"""

from __future__ import annotations

import time
from dataclasses import replace

from enclave.runners.placement import (
    Deployment,
    Device,
    Runner,
    cleared,
    memory_report,
    plan,
)

CLASSES = ["public", "internal", "confidential", "secret"]
ENGINES = frozenset({"llamacpp", "sentence-transformers"})

runners = {
    "cpu-a": Runner("cpu-a", (Device("ram", 32),), ENGINES, "confidential"),
    "cpu-b": Runner("cpu-b", (Device("ram", 16),), ENGINES, "confidential"),
    "cpu-c": Runner("cpu-c", (Device("ram", 16),), ENGINES, "internal"),
}
deployments: dict[str, Deployment] = {}
now = 0.0


def deploy(model: str, memory_gb: float, **kw: object) -> Deployment:
    fields: dict[str, object] = {"engine": "llamacpp", "clearance": "internal", **kw}
    return Deployment(model=model, memory_gb=memory_gb, **fields)  # type: ignore[arg-type]


def use(model: str) -> None:
    for name, runner in runners.items():
        reps = tuple(replace(r, last_used=now) if r.model == model else r for r in runner.replicas)
        runners[name] = replace(runner, replicas=reps)


steps: list[tuple[str, object]] = [
    (
        "apply embedder (1 GB, 3 replicas)",
        lambda: deployments.update(
            embed=deploy("minilm", 1, engine="sentence-transformers", replicas=3)
        ),
    ),
    (
        "apply llama-8b (6 GB, 2 replicas, high, confidential)",
        lambda: deployments.update(
            llama=deploy("llama-8b", 6, replicas=2, priority="high", clearance="confidential")
        ),
    ),
    (
        "apply qwen-14b (10 GB, low)",
        lambda: deployments.update(qwen=deploy("qwen-14b", 10, priority="low")),
    ),
    (
        "apply mixtral (24 GB, high, keep_alive 10m)",
        lambda: deployments.update(
            mixtral=deploy("mixtral", 24, priority="high", keep_alive_s=600)
        ),
    ),
    ("use mixtral (loads on first use; may evict idle low-priority)", lambda: use("mixtral")),
    (
        "apply smol (0.5 GB, 2 replicas)",
        lambda: deployments.update(smol=deploy("smol", 0.5, replicas=2)),
    ),
    ("wait 11 minutes (mixtral idle past keep_alive)", None),
    ("cpu-b leaves", lambda: runners.update({"cpu-b": replace(runners["cpu-b"], up=False)})),
    (
        "apply gemma-27b (18 GB, high, confidential)",
        lambda: deployments.update(
            gemma=deploy("gemma-27b", 18, priority="high", clearance="confidential")
        ),
    ),
    (
        "cpu-b comes back (empty)",
        lambda: runners.update({"cpu-b": replace(runners["cpu-b"], up=True, replicas=())}),
    ),
    ("remove gemma-27b", lambda: deployments.pop("gemma")),
]

demand: set[str] = set()
total_ms = 0.0
for label, change in steps:
    demand = set()
    if label.startswith("wait"):
        now += 660
    elif label.startswith("use"):
        demand.add(label.split()[1])
    if callable(change):
        change()
    started = time.perf_counter()
    result = plan(runners.values(), deployments.values(), classes=CLASSES, now=now, demand=demand)
    elapsed_ms = (time.perf_counter() - started) * 1000
    total_ms += elapsed_ms
    print(f"\n== {label}  (plan: {elapsed_ms:.2f} ms)")
    for decision in result.decisions:
        print(f"   {decision}")
    if not result.decisions:
        print("   (nothing to do)")
    for line in memory_report(result.runners):
        print(f"   {line}")
    for model, reason in result.unavailable.items():
        print(f"   503 for {model}: {reason}")
    declared = {d.model: d for d in deployments.values()}
    for runner in result.runners:
        for device in runner.devices:
            assert runner.used_gb(device.name) <= device.memory_gb, runner
        for rep in runner.replicas:
            assert cleared(runner.clearance, declared[rep.model].clearance, CLASSES), rep
    after = {r.name: r for r in result.runners}
    runners = {name: after.get(name, replace(r, replicas=())) for name, r in runners.items()}

print(f"\n{len(steps)} changes, {total_ms:.2f} ms planning in all")
