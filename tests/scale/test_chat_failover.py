"""300 chat requests through the load balancer, a third of them streamed, while
replicas are killed (SIGKILL) and restarted one after another.

Every request carries a marker (``scale-req-0042``) and runs in the ``scale``
workspace, which keeps prompt text in the audit log, so each audit entry names
the request it is about. Then, read from the shared database:

* every request answered 200 (a whole body, or a stream to ``[DONE]``) has
  exactly one audit entry, with outcome ``ok`` and the tokens the client was
  told;
* requests fail only around a kill (in flight then, or sent before haproxy's
  checks marked the replica down), and cleanly: a 502/503/504 or a broken
  connection, never a 200 that ends early without saying so; each has at most
  one entry;
  a stream cut off by its replica's death has exactly one, ``interrupted``,
  written by another replica once the dead one missed ``member_timeout_s``;
* the chain verifies (``enclave audit verify``) across every replica's entries;
* usage (``GET /api/usage``) equals the sum of the ``ok`` entries, exactly.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.scale.cluster import Cluster, wait_until

REQUESTS = 300
CONCURRENCY = 6
KEYS = 10  # 30 requests each: well under the 60 per minute every key may send
# haproxy checks every 0.5 s and needs 2 failures (inter 500 fall 2): a dead replica
# gets no more requests about 1 s after it died. A request may fail only if it was in
# flight at a kill or started within this many seconds after one.
RECOVERY_S = 3.0
MARKER = re.compile(r"scale-req-(\d{4})")


@dataclass
class Outcome:
    index: int
    stream: bool
    status: int | None = None
    complete: bool = False
    usage: tuple[int, int] | None = None
    error: str = ""
    events: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def answered(self) -> bool:
        return self.status == 200 and self.complete


def prompt(i: int) -> str:
    return f"scale-req-{i:04d}: " + " ".join(["word"] * (i % 7))


def send(http: httpx.Client, i: int, key: str) -> Outcome:
    stream = i % 3 == 0
    outcome = Outcome(i, stream, started=time.monotonic())
    try:
        return _send(http, outcome, key)
    finally:
        outcome.ended = time.monotonic()


def _send(http: httpx.Client, outcome: Outcome, key: str) -> Outcome:
    i, stream = outcome.index, outcome.stream
    body: dict[str, Any] = {
        "model": "mock",
        "messages": [{"role": "user", "content": prompt(i)}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if not stream:
            response = http.post("/v1/chat/completions", json=body, headers=headers)
            outcome.status = response.status_code
            if response.status_code == 200:
                usage = response.json()["usage"]
                outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"])
                outcome.complete = True
            else:
                outcome.error = response.text[:200]
            return outcome
        with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                outcome.error = response.read().decode(errors="replace")[:200]
                return outcome
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    outcome.complete = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    outcome.events.append("error")
                    outcome.error = str(event["error"])[:200]
                elif event.get("usage"):
                    usage = event["usage"]
                    outcome.usage = (usage["prompt_tokens"], usage["completion_tokens"])
    except httpx.TransportError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.complete = False
    return outcome


def test_chat_under_replica_kills_is_audited_once_and_counted_exactly(
    cluster: Cluster,
) -> None:
    keys = [cluster.create_key(f"scale-{n}", workspace="scale")[1] for n in range(KEYS)]
    done = threading.Event()
    kills: list[tuple[str, float]] = []  # (replica id, when)

    def ready(index: int) -> bool:
        replica = cluster.replicas[index]
        try:
            return replica.alive and httpx.get(f"{replica.url}/readyz", timeout=1).is_success
        except httpx.TransportError:
            return False

    def chaos() -> None:
        """Every 3 s, SIGKILL the next replica and start it again (it takes a while to
        be ready), as long as another replica is ready to take the traffic."""
        victim = 0
        done.wait(1.0)
        while not done.is_set():
            others = [i for i in range(len(cluster.replicas)) if i != victim]
            if any(ready(i) for i in others):
                kills.append((cluster.replicas[victim].replica_id, time.monotonic()))
                cluster.kill(victim)
                cluster.restart(victim, wait=False)
                victim = (victim + 1) % len(cluster.replicas)
                done.wait(3.0)
            else:
                done.wait(0.2)

    local, clients = threading.local(), list[httpx.Client]()

    def one(i: int) -> Outcome:
        if not hasattr(local, "http"):  # one keep-alive connection per worker
            local.http = httpx.Client(base_url=cluster.lb_url, timeout=60)
            clients.append(local.http)
        return send(local.http, i, keys[i % KEYS])

    killer = threading.Thread(target=chaos, name="chaos", daemon=True)
    killer.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            outcomes = list(pool.map(one, range(REQUESTS)))
    finally:
        done.set()
        killer.join(timeout=60)
        for client in clients:
            client.close()
    elapsed = time.monotonic() - started

    answered = [o for o in outcomes if o.answered]
    failed = [o for o in outcomes if not o.answered]
    summary = (
        f"{len(answered)} answered, {len(failed)} failed in {elapsed:.0f} s; "
        f"killed {[name for name, _ in kills]}; "
        f"failures: {[(o.index, o.status, o.error[:80]) for o in failed][:20]}"
    )
    print(summary)
    assert len(kills) >= 2, summary
    # Only requests in flight on a replica as it died, or sent before haproxy saw it
    # down, may fail: haproxy resends a request whose connection was refused, and
    # stops choosing the dead replica after its health checks fail.
    late = [
        (o.index, o.status, [round(o.started - when, 2) for _, when in kills])
        for o in failed
        if not any(o.ended >= when and o.started <= when + RECOVERY_S for _, when in kills)
    ]
    assert late == [], f"failures away from any kill (index, status, start - kill): {late}"

    # Clean failures: an error status from the balancer or a replica, or a broken
    # connection; never a 200 whose body silently stops.
    unclean = [
        o
        for o in failed
        if not (
            (o.status is not None and o.status in (502, 503, 504))
            or (o.status in (200, None) and (o.error or o.events))
        )
    ]
    assert unclean == [], f"unclean failures: {unclean}; {summary}"
    assert all(o.usage is not None for o in answered), "an answer without usage"
    broken_streams = [o for o in failed if o.stream and o.status == 200]

    # The dead replicas' requests in flight are closed by the living ones.
    timeout = float(cluster.options.cluster["member_timeout_s"]) + 20
    with contextlib.suppress(TimeoutError):  # asserted below, entry by entry
        wait_until(
            lambda: cluster.sql("SELECT count(*) FROM audit_intents")[0][0] == 0,
            timeout,
            "every intent closed",
            step=0.5,
        )
    open_intents = cluster.sql("SELECT replica, count(*) FROM audit_intents GROUP BY replica")
    print(f"broken streams: {[o.index for o in broken_streams]}; open intents: {open_intents}")

    entries: dict[int, list[dict[str, Any]]] = {}
    unmarked = []
    for (payload,) in cluster.sql("SELECT payload FROM audit_log WHERE workspace = 'scale'"):
        entry = json.loads(payload)
        found = MARKER.search(str(entry.get("prompt_text") or ""))
        if found is None:
            unmarked.append(entry)
        else:
            entries.setdefault(int(found.group(1)), []).append(entry)
    context = f"{summary}; intents still open: {open_intents}\n{cluster.logs()}"
    assert unmarked == [], f"entries in 'scale' naming no request: {unmarked[:5]}; {context}"

    wrong = []
    for o in answered:
        mine = entries.get(o.index, [])
        tokens = [(e.get("prompt_tokens"), e.get("completion_tokens")) for e in mine]
        if [e["outcome"] for e in mine] != ["ok"] or tokens != [o.usage]:
            wrong.append((o.index, o.usage, [(e["outcome"], e.get("status")) for e in mine]))
    assert wrong == [], f"answered requests without exactly one matching ok entry: {wrong}"
    twice = {i: [e["outcome"] for e in found] for i, found in entries.items() if len(found) > 1}
    assert twice == {}, f"requests with more than one entry: {twice}; {context}"
    not_interrupted = [
        (o.index, [e["outcome"] for e in entries.get(o.index, [])])
        for o in broken_streams
        if [e["outcome"] for e in entries.get(o.index, [])] != ["interrupted"]
    ]
    assert not_interrupted == [], (
        f"cut-off streams not audited 'interrupted': {not_interrupted}; {context}"
    )

    verified = cluster.cli("audit", "verify", "--config", str(cluster.config_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit log OK" in verified.stdout

    ok_entries = [e for found in entries.values() for e in found if e["outcome"] == "ok"]
    with cluster.http() as http:
        usage = http.get("/api/usage", params={"workspace": "scale"})
    assert usage.status_code == 200, usage.text
    lines = usage.json()["data"]
    reported = tuple(
        sum(line[name] for line in lines)
        for name in ("requests", "prompt_tokens", "completion_tokens")
    )
    expected = (
        len(ok_entries),
        sum(int(e["prompt_tokens"]) for e in ok_entries),
        sum(int(e["completion_tokens"]) for e in ok_entries),
    )
    assert reported == expected, f"usage (requests, prompt, completion) {reported} != {expected}"
    assert expected[0] >= len(answered)
