"""Scale-out: requests/s through haproxy with 1, 2 and 3 replicas, and the time to recover.

One run starts the cluster of ``tests/scale/cluster.py`` (Postgres with
pgvector, Redis, the mock upstream with no delay, three ``enclave serve``
replicas with ``cluster.replicas: true``, haproxy), then:

1. Throughput. For 1, 2 and 3 replicas behind haproxy (haproxy restarted with
   that many servers), ``--rounds`` rounds of ``--requests`` chat requests at
   concurrency ``--concurrency`` (closed loop, aiohttp), streamed and not. It
   prints the median requests/s, its ratio to 1 replica, and the CPU seconds
   per 1,000 requests of each part (replicas, haproxy, the mock upstream, the
   load generator, Postgres and Redis), which shows where the ceiling is on a
   machine with few cores (everything shares them), and the Postgres
   transactions committed per request (how well the audit log's group commit
   still batches when each replica commits only its own share).
2. Recovery. Under steady load, SIGKILL one replica and poll haproxy's stats
   socket every 10 ms: the time until haproxy marks it DOWN (it sends it no
   more requests after that), the time of the last failed request after the
   kill, and how many failed. Then the replica is restarted and the time
   until haproxy has it UP again is printed too.

    .venv/bin/python bench/scale.py                  # ~2 min on 2 cores
    .venv/bin/python bench/scale.py --rounds 5 --requests 3000 --json out.json

Needs Debian's redis-server and haproxy (``apt-get install redis-server haproxy``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scale.cluster import ADMIN_KEY, Cluster, ClusterOptions, missing_binaries  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_S = 3.0  # seconds of no load over which each part's idle CPU is measured

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--replicas", type=int, default=3, help="up to this many (1, 2, ... N)")
parser.add_argument("--requests", type=int, default=1500, help="requests per round")
parser.add_argument("--concurrency", type=int, default=32)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--modes", default="nonstream,stream")
parser.add_argument("--kills", type=int, default=3, help="SIGKILLs for the recovery figure")
parser.add_argument("--json", help="write all results to this file")


def body(stream: bool) -> bytes:
    request: dict[str, Any] = {
        "model": "mock",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 20,
    }
    if stream:
        request["stream"] = True
    return json.dumps(request).encode()


async def one(session: aiohttp.ClientSession, url: str, payload: bytes, stream: bool) -> bool:
    """One request; True when it was answered in full (a stream up to ``[DONE]``)."""
    try:
        async with session.post(url, data=payload) as response:
            data = await response.read()
            if response.status != 200:
                return False
            return data.rstrip().endswith(b"[DONE]") if stream else b'"choices"' in data
    except (TimeoutError, aiohttp.ClientError):
        return False


async def closed_loop(
    url: str,
    stream: bool,
    concurrency: int,
    requests: int | None = None,
    stop: threading.Event | None = None,
    failures: list[float] | None = None,
) -> tuple[int, int, float]:
    """``requests`` requests (or until ``stop``) from ``concurrency`` workers:
    (answered, failed, seconds). Failure times (monotonic) go to ``failures``."""
    payload = body(stream)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    issued = answered = failed = 0
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def worker() -> None:
            nonlocal issued, answered, failed
            while (requests is None or issued < requests) and not (stop and stop.is_set()):
                issued += 1
                if await one(session, url, payload, stream):
                    answered += 1
                else:
                    failed += 1
                    if failures is not None:
                        failures.append(time.monotonic())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return answered, failed, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    family, grew = {pid}, True
    while grew:
        children = {child for child, parent in parents.items() if parent in family}
        grew = not children <= family
        family |= children
    return sum(times.get(member, 0.0) for member in family)


def parts(cluster: Cluster) -> dict[str, list[int]]:
    """Process ids of each part of the system, for the CPU breakdown."""
    found: dict[str, list[int]] = {
        "replicas": [r.process.pid for r in cluster.replicas if r.process and r.alive],
        "haproxy": [cluster.haproxy.pid] if cluster.haproxy else [],
        "mock": [cluster.helpers["mock-chat"].pid],
        "redis": [cluster.helpers["redis"].pid],
    }
    postmaster = cluster.work / "pgdata" / "postmaster.pid"
    if postmaster.exists():
        found["postgres"] = [int(postmaster.read_text().split()[0])]
    return found


def commit_count(cluster: Cluster) -> int:
    """Transactions committed in the replicas' database so far (pg_stat_database)."""
    rows = cluster.sql(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(rows[0][0])


def throughput(cluster: Cluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    url = f"{cluster.lb_url}/v1/chat/completions"
    for count in range(1, args.replicas + 1):
        # Only the replicas measured run: an idle one still heartbeats and polls.
        for replica in cluster.replicas[count:]:
            cluster.stop(replica.index)
        for replica in cluster.replicas[:count]:
            cluster.restart(replica.index)
        cluster.start_haproxy(list(range(count)))
        pids = parts(cluster)
        before = {name: sum(map(cpu_seconds, ids)) for name, ids in pids.items()}
        time.sleep(IDLE_S)
        idle = {
            name: 100 * (sum(map(cpu_seconds, ids)) - before[name]) / IDLE_S
            for name, ids in pids.items()
        }
        for stream in [mode == "stream" for mode in args.modes.split(",")]:
            asyncio.run(closed_loop(url, stream, args.concurrency, requests=200))  # warm-up
            rates, cpu = [], {name: 0.0 for name in [*pids, "load"]}
            answered_total = failed_total = commits = 0
            for _ in range(args.rounds):
                commits -= commit_count(cluster)
                before = {name: sum(map(cpu_seconds, ids)) for name, ids in pids.items()}
                load_before = time.process_time()  # this process only, not its children
                answered, failed, seconds = asyncio.run(
                    closed_loop(url, stream, args.concurrency, requests=args.requests)
                )
                cpu["load"] += time.process_time() - load_before
                commits += commit_count(cluster)
                for name, ids in pids.items():
                    cpu[name] += sum(map(cpu_seconds, ids)) - before[name]
                rates.append(answered / seconds)
                answered_total += answered
                failed_total += failed
            row = {
                "mode": "stream" if stream else "nonstream",
                "replicas": count,
                "rps": statistics.median(rates),
                "rounds": rates,
                "failed": failed_total,
                "idle_cpu_percent": idle,
                "postgres_commits_per_request": commits / max(answered_total, 1),
                "cpu_ms_per_request": {
                    name: 1000 * seconds / max(answered_total, 1) for name, seconds in cpu.items()
                },
            }
            results.append(row)
            print(
                f"# {row['mode']:9} {count} replica(s): {row['rps']:7.0f} req/s "
                f"(rounds {', '.join(f'{r:.0f}' for r in rates)}; {failed_total} failed; "
                f"idle CPU: replicas {idle['replicas']:.0f}%, postgres {idle['postgres']:.0f}%)"
            )
    results.sort(key=lambda row: (row["mode"] != "nonstream", row["replicas"]))
    return results


def steady_load(url: str, stop: threading.Event, failures: list[float]) -> None:
    asyncio.run(closed_loop(url, False, 8, stop=stop, failures=failures))


def recovery(cluster: Cluster, args: argparse.Namespace) -> list[dict[str, float]]:
    cluster.start_haproxy(list(range(len(cluster.replicas))))
    url = f"{cluster.lb_url}/v1/chat/completions"
    results = []
    for kill in range(args.kills):
        victim = cluster.replicas[kill % len(cluster.replicas)]
        stop, failures = threading.Event(), list[float]()
        loader = threading.Thread(
            target=steady_load, args=(url, stop, failures), daemon=True, name="load"
        )
        loader.start()
        time.sleep(1.0)
        assert victim.process is not None
        killed = time.monotonic()
        os.kill(victim.process.pid, signal.SIGKILL)
        down = None
        while time.monotonic() - killed < 10:
            if cluster.haproxy_status().get(victim.name, "").startswith("DOWN"):
                down = time.monotonic() - killed
                break
            time.sleep(0.01)
        time.sleep(2.0)
        stop.set()
        loader.join(timeout=30)
        victim.process.wait(timeout=10)
        after = [t - killed for t in failures if t >= killed - 0.05]
        restarted = time.monotonic()
        cluster.restart(victim.index, wait=False)
        cluster.wait_ready(victim)
        while cluster.haproxy_status().get(victim.name) != "UP":
            time.sleep(0.01)
        row = {
            "down_s": down if down is not None else float("nan"),
            "last_error_s": max(after) if after else 0.0,
            "failed": float(len(after)),
            "rejoin_s": time.monotonic() - restarted,
        }
        results.append(row)
        print(
            f"# kill {kill + 1} ({victim.name}): DOWN in haproxy after {row['down_s']:.2f} s, "
            f"{len(after)} failed requests, the last {row['last_error_s']:.2f} s after the kill; "
            f"back UP {row['rejoin_s']:.1f} s after the restart"
        )
    return results


def main() -> int:
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        raise SystemExit(f"needs {' and '.join(missing)}: apt-get install redis-server haproxy")
    options = ClusterOptions(
        replicas=args.replicas,
        chat_delay=0.0,
        embeddings=False,
        planner=False,
        hr_api=False,
        key_requests_per_minute=None,
        log_level="warning",
    )
    started = time.monotonic()
    with Cluster(options) as cluster:
        print(
            f"# cluster of {args.replicas} up in {time.monotonic() - started:.0f} s "
            f"({os.cpu_count()} CPUs); concurrency {args.concurrency}, "
            f"{args.requests} requests x {args.rounds} rounds per cell"
        )
        rates = throughput(cluster, args)
        recovered = recovery(cluster, args)
    print()
    print(
        "mode       replicas |   req/s | vs 1 | CPU ms per request: "
        "replicas haproxy mock load postgres redis | Postgres commits per request"
    )
    for row in rates:
        base = next(r for r in rates if r["mode"] == row["mode"] and r["replicas"] == 1)
        cpu = row["cpu_ms_per_request"]
        print(
            f"{row['mode']:9} {row['replicas']:>9} | {row['rps']:7.0f} | "
            f"{row['rps'] / base['rps']:4.2f} | "
            + " ".join(
                f"{cpu.get(name, float('nan')):.2f}"
                for name in ("replicas", "haproxy", "mock", "load", "postgres", "redis")
            )
            + f" | {row['postgres_commits_per_request']:.2f}"
        )
    print()
    downs = sorted(r["down_s"] for r in recovered)
    print(
        f"recovery after SIGKILL (haproxy inter 500 ms, fall 2): DOWN after "
        f"median {statistics.median(downs):.2f} s (max {downs[-1]:.2f} s); failed requests "
        f"per kill {', '.join(str(int(r['failed'])) for r in recovered)}; "
        f"back UP {statistics.median(r['rejoin_s'] for r in recovered):.1f} s after a restart"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": rates, "recovery": recovered}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
