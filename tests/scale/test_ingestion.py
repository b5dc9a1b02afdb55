"""30 documents uploaded through the load balancer while a replica dies (SIGKILL):
every one ends indexed, and every chunk is stored exactly once.

The uploads are kept by the database, and the jobs are leased: the dead
replica's job is taken over by another replica once its lease lapses
(``cluster.job_lease_s``, 3 s here), and resumes where its chunks stopped.
The chunks are checked where they live, in Postgres's ``knowledge_chunks``.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.scale.cluster import Cluster, Replica, wait_until

DOCUMENTS = 30
KB = "scale-docs"
TOPICS = [
    "parental leave",
    "travel expenses",
    "remote work",
    "pension savings",
    "sick leave",
    "overtime pay",
    "training budget",
    "company cars",
    "data protection",
    "procurement",
]


def document(i: int) -> str:
    """A Markdown policy of a few chunks, with a sentence only this one has."""
    topic = TOPICS[i % len(TOPICS)]
    sections = []
    for section in range(3):
        sentences = " ".join(
            f"Rule {section}.{n} of the {topic} policy number {i} says that staff in unit "
            f"{i * 7 + n} must file form {i}-{section}-{n} within {n + 2} working days."
            for n in range(8)
        )
        sections.append(f"## Section {section}\n\n{sentences}\n")
    unique = f"The archive code of policy {i} is zebra{i:02d}quartz."
    return f"# Policy {i}: {topic}\n\n{unique}\n\n" + "\n".join(sections)


def upload(cluster: Cluster, i: int) -> int:
    """Upload document ``i`` through the load balancer; retry what failed cleanly.

    A retried upload of the same name and content is the same document
    (``unchanged`` when the first one got through), so retrying is safe here.
    """
    name = f"policy-{i:02d}.md"
    last = ""
    for _ in range(10):
        try:
            with cluster.http() as http:
                response = http.post(
                    f"/api/knowledge/{KB}/documents",
                    files={"file": (name, document(i).encode(), "text/markdown")},
                )
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == 202:
                return int(response.json()["data"][0]["document"]["id"])
            assert response.status_code in (502, 503, 504), response.text
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(0.5)
    raise AssertionError(f"upload of {name} kept failing: {last}")


def documents(cluster: Cluster) -> list[tuple[int, str, str, int]]:
    return [
        (int(row[0]), str(row[1]), str(row[2]), int(row[3]))
        for row in cluster.sql(
            "SELECT d.id, d.name, d.status, d.chunks FROM knowledge_documents d "
            "JOIN knowledge_bases b ON b.id = d.kb_id WHERE b.name = %s ORDER BY d.name",
            KB,
        )
    ]


def test_documents_ingested_while_a_replica_is_killed_are_indexed_once(
    cluster: Cluster,
) -> None:
    with cluster.http() as http:
        created = http.post("/api/knowledge", json={"name": KB})
    assert created.status_code == 201, created.text
    victim = cluster.replicas[1]
    try:
        check_ingestion(cluster, victim)
    finally:
        cluster.restart(victim.index, wait=False)  # the next test waits for it


def check_ingestion(cluster: Cluster, victim: Replica) -> None:
    def holds_a_lease() -> bool:
        rows = cluster.sql(
            "SELECT count(*) FROM ingestion_jobs WHERE leased_by = %s", victim.replica_id
        )
        return bool(rows[0][0])

    with ThreadPoolExecutor(max_workers=3) as pool:
        first = list(pool.map(lambda i: upload(cluster, i), range(10)))
        # Kill it while it holds a job's lease (or after 2 s: most of the ten are queued).
        try:
            wait_until(holds_a_lease, 2, f"{victim.replica_id} holding an ingestion lease")
            held = True
        except TimeoutError:
            held = False
        cluster.kill(victim.index)
        killed_at = time.monotonic()
        rest = list(pool.map(lambda i: upload(cluster, i), range(10, DOCUMENTS)))
    assert len(set(first + rest)) == DOCUMENTS

    def all_done() -> bool:
        found = documents(cluster)
        return len(found) >= DOCUMENTS and all(
            status in ("indexed", "failed") for _, _, status, _ in found
        )

    with contextlib.suppress(TimeoutError):  # the assertions say which documents, and how
        wait_until(all_done, 120, "all 30 documents indexed", step=0.5)
    found = documents(cluster)
    jobs = cluster.sql(
        "SELECT document_id, state, leased_by, attempts, chunks_done FROM ingestion_jobs "
        "WHERE state <> 'done' ORDER BY document_id"
    )
    detail = (
        f"victim {victim.replica_id} held a lease when killed: {held}; "
        f"{time.monotonic() - killed_at:.0f} s since the kill; unfinished jobs: {jobs}\n"
        f"{cluster.logs()}"
    )
    # Jobs claimed more than once: taken over from the dead replica.
    taken_over = cluster.sql(
        "SELECT count(*) FROM ingestion_jobs j JOIN knowledge_documents d ON d.id = "
        "j.document_id JOIN knowledge_bases b ON b.id = d.kb_id "
        "WHERE b.name = %s AND j.attempts > 1",
        KB,
    )[0][0]
    print(
        f"ingestion: {len(found)} documents, {time.monotonic() - killed_at:.1f} s after "
        f"the kill; lease held: {held}; jobs taken over: {taken_over}"
    )
    not_indexed = [(name, status) for _, name, status, _ in found if status != "indexed"]
    assert len(found) == DOCUMENTS, f"{len(found)} documents, not {DOCUMENTS}: {detail}"
    assert not not_indexed, f"not indexed: {not_indexed}; {detail}"
    if held:  # it died holding a job, so another replica must have taken that job over
        assert taken_over >= 1, f"no job was claimed twice; {detail}"

    # Each chunk exactly once: no (document, ordinal) twice, nothing left hidden, and
    # every document has exactly the chunks it says, numbered without gaps.
    kb_id = cluster.sql("SELECT id FROM knowledge_bases WHERE name = %s", KB)[0][0]
    duplicates = cluster.sql(
        "SELECT document_id, ordinal, count(*) FROM knowledge_chunks WHERE kb_id = %s "
        "GROUP BY document_id, ordinal HAVING count(*) > 1",
        kb_id,
    )
    assert duplicates == [], f"chunks stored twice (document, ordinal, copies): {duplicates}"
    stored = {
        int(row[0]): (int(row[1]), int(row[2]), int(row[3]), bool(row[4]))
        for row in cluster.sql(
            "SELECT document_id, count(*), min(ordinal), max(ordinal), bool_and(published) "
            "FROM knowledge_chunks WHERE kb_id = %s GROUP BY document_id",
            kb_id,
        )
    }
    wrong: list[Any] = []
    for document_id, name, _, chunks in found:
        count, low, high, published = stored.get(document_id, (0, 0, -1, True))
        if chunks < 1 or count != chunks or high - low + 1 != count or not published:
            wrong.append((name, {"chunks": chunks, "stored": count, "published": published}))
    assert wrong == [], f"documents whose stored chunks disagree: {wrong}"

    # And the user finds them: a sentence only document 17 has comes back from it.
    with cluster.http() as http:
        hits = http.post(f"/api/knowledge/{KB}/query", json={"query": "archive code zebra17quartz"})
    assert hits.status_code == 200, hits.text
    assert "zebra17quartz" in hits.json()["data"][0]["text"]
