"""State the replicas share: the per-key limit (in Redis), pending actions and app
versions (in Postgres). Each test talks to the replicas directly, not through the
load balancer, so it knows which replica answered."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from enclave.apps.manifest import canonical, load_app_file
from tests.scale.cluster import ADMIN_KEY, HR_TOKEN, ROOT, Cluster

EXAMPLE = ROOT / "examples" / "hr-assistant"


def chat(url: str, key: str, text: str, model: str = "planner") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_a_key_limit_of_60_per_minute_holds_across_replicas(cluster: Cluster) -> None:
    _, key = cluster.create_key("limited")
    urls = [replica.url for replica in cluster.replicas]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda i: chat(urls[i % 3], key, f"request {i}"), range(60)))
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * 60, [
        (s, a.text[:120]) for s, a in zip(statuses, answers, strict=True) if s != 200
    ]
    # The 61st, at every replica: each refuses it, whichever one it is.
    over = [chat(url, key, "one too many") for url in urls]
    assert time.monotonic() - started < 50, "too slow to be inside one minute"
    for replica, answer in zip(cluster.replicas, over, strict=True):
        assert answer.status_code == 429, f"{replica.name}: {answer.status_code} {answer.text}"
        assert answer.json()["error"]["code"] == "rate_limit_requests", answer.text
        assert int(answer.headers["retry-after"]) >= 1


def hr_app(cluster: Cluster, name: str, **changes: Any) -> dict[str, Any]:
    """The shipped hr-assistant example on the planner model and the mock HR API."""
    spec = canonical(load_app_file(EXAMPLE / "app.yaml"))
    spec["metadata"]["name"] = name
    spec["spec"].pop("knowledge", None)
    spec["spec"].pop("grounding", None)
    spec["spec"].pop("tests", None)
    spec["spec"]["model"] = "planner"
    spec["spec"]["apis"][0]["url"] = cluster.hr_url
    spec["spec"].update(changes)
    return dict(spec)


def apply(url: str, spec: dict[str, Any], key: str) -> dict[str, Any]:
    name = spec["metadata"]["name"]
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.put(f"{url}/api/apps/{name}", json={"spec": spec}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def nurses(cluster: Cluster) -> int:
    headers = {"Authorization": f"Bearer {HR_TOKEN}"}
    vacancies = httpx.get(f"{cluster.hr_url}/vacancies", headers=headers, timeout=10).json()
    return sum(1 for vacancy in vacancies if vacancy["title"] == "Nurse")


def test_an_action_confirmed_at_two_replicas_at_once_runs_once(cluster: Cluster) -> None:
    first, second = cluster.replicas[0], cluster.replicas[1]
    apply(first.url, hr_app(cluster, "hr-race"), ADMIN_KEY)
    rounds = 5
    before = nurses(cluster)
    for round_ in range(rounds):
        asked = chat(second.url, ADMIN_KEY, "Create a new vacancy titled Nurse.", "app/hr-race")
        assert asked.status_code == 200, asked.text
        pending = asked.json()["app"]["pending_action"]
        assert pending is not None and pending["operation_id"] == "createVacancy", asked.text
        assert nurses(cluster) == before + round_  # nothing written before confirmation

        barrier = threading.Barrier(2)

        def confirm(
            url: str, action: str = pending["id"], barrier: threading.Barrier = barrier
        ) -> httpx.Response:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            barrier.wait(timeout=10)
            return httpx.post(f"{url}/api/actions/{action}/confirm", headers=headers, timeout=60)

        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(confirm, [first.url, second.url]))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [200, 409], [(a.status_code, a.text[:200]) for a in answers]
        executed = next(answer for answer in answers if answer.status_code == 200).json()
        assert executed["status"] == "executed" and executed["result"]["status"] == 201
        # The mock HR API saw exactly one write per confirmed action.
        assert nurses(cluster) == before + round_ + 1, f"round {round_}: {answers}"


def wait_for_version(url: str, name: str, version: int, timeout: float) -> float:
    """Seconds until ``url`` serves app ``name`` at ``version``; raise after ``timeout``."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    started = time.monotonic()
    seen: Any = None
    while time.monotonic() - started < timeout:
        response = httpx.get(f"{url}/api/apps/{name}", headers=headers, timeout=10)
        seen = (response.status_code, response.text[:200])
        if response.status_code == 200 and response.json().get("version") == version:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{url} did not serve {name} v{version} within {timeout} s: {seen}")


def test_an_app_applied_on_one_replica_is_served_by_the_others(cluster: Cluster) -> None:
    key = ADMIN_KEY
    first, others = cluster.replicas[0], cluster.replicas[1:]
    spec = hr_app(cluster, "hr-spread", system_prompt="You help HR staff. Be brief.\n")
    assert apply(first.url, spec, key)["version"] == 1
    for replica in others:
        wait_for_version(replica.url, "hr-spread", 1, timeout=5)
        answer = chat(replica.url, key, "What is the capital of France?", "app/hr-spread")
        assert answer.status_code == 200, f"{replica.name}: {answer.text}"
    # A new version, applied on the first replica, replaces the old one everywhere.
    changed = hr_app(cluster, "hr-spread", system_prompt="You help HR staff. Be very brief.\n")
    assert apply(first.url, changed, key)["version"] == 2
    for replica in others:
        wait_for_version(replica.url, "hr-spread", 2, timeout=5)
        got = httpx.get(
            f"{replica.url}/api/apps/hr-spread",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        assert "Be very brief" in str(got), f"{replica.name} serves the old spec"


def test_a_key_revoked_at_one_replica_is_refused_by_all_of_them_at_once(
    cluster: Cluster,
) -> None:
    """Each replica caches verified keys for a few seconds; a revocation reaches the
    others by Postgres NOTIFY, well inside that."""
    key_id, key = cluster.create_key("revoked soon")
    headers = {"Authorization": f"Bearer {key}"}
    for replica in cluster.replicas:  # every replica has it cached now
        listed = httpx.get(f"{replica.url}/v1/models", headers=headers, timeout=10)
        assert listed.status_code == 200, f"{replica.name}: {listed.text}"
    first = cluster.replicas[0]
    revoked = httpx.delete(
        f"{first.url}/api/keys/{key_id}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    for replica in cluster.replicas:
        while True:
            answer = httpx.get(f"{replica.url}/v1/models", headers=headers, timeout=10)
            if answer.status_code == 401:
                break
            assert answer.status_code == 200, f"{replica.name}: {answer.text}"
            # The cache's TTL is 5 s; a notification arrives in milliseconds.
            assert time.monotonic() - started < 2, f"{replica.name} still serves the key"
            time.sleep(0.02)
