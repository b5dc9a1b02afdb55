"""Memory that comes back: a bounded bad-input soak against the app, in-process.

Builds the app with the real built-in models (smollm2 for chat, all-MiniLM for
embeddings), warms it up with normal and bad requests, then for ``--seconds``
sends, in rotation, the inputs issue 12 lists as hurting the server: an 8 MB
embedding string, 2048 inputs of 4 KB, an 8 MB chat prompt, deep JSON, a 5 MB
model name, integers past 2^63, NUL bytes, an 8 MB app prompt; each followed
by a normal chat and a normal embedding. It prints RSS after warm-up and after
the soak (and the worst latency of each kind of request), and exits 1 if RSS
ended more than 20% above its warm-up level or if any answer was a 5xx:

    .venv/bin/python bench/soak.py                 # 60 s soak
    .venv/bin/python bench/soak.py --seconds 20
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.input_limits import release_memory
from enclave.settings import Settings

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--seconds", type=float, default=60.0, help="length of the soak")
args = parser.parse_args()


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


for name in [name for name in os.environ if name.startswith("ENCLAVE_")]:
    del os.environ[name]
home = Path(tempfile.mkdtemp(prefix="enclave-soak-"))
admin_key = "ek-soak-" + secrets.token_hex(16)
settings = Settings(home=home, admin_key=admin_key, max_body_bytes=16 * 1024 * 1024)
auth = {"Authorization": f"Bearer {admin_key}"}
MB8 = 8 * 1024 * 1024
chat_ok = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 4,
    "temperature": 0,
}
embed_ok = {"model": "all-minilm-l6-v2", "input": ["a short sentence to embed"]}
deep = "[" * 200_000 + "]" * 200_000
app_spec = {
    "apiVersion": "enclave/v1",
    "kind": "App",
    "metadata": {"name": "soak"},
    "spec": {"model": "smollm2-135m", "system_prompt": "p" * MB8},
}
embed_huge: dict[str, object] = {"model": "all-minilm-l6-v2", "input": "w " * (MB8 // 2)}
embed_many: dict[str, object] = {"model": "all-minilm-l6-v2", "input": ["w " * 2048] * 2048}
chat_huge: dict[str, object] = {
    **chat_ok,
    "messages": [{"role": "user", "content": "w " * (MB8 // 2)}],
}
long_model: dict[str, object] = {**chat_ok, "model": "m" * 5 * 2**20}
BAD: list[tuple[str, str, str, dict[str, object] | None, str | None]] = [
    # (label, method, path, json body, raw body)
    ("embed 8 MB string", "POST", "/v1/embeddings", embed_huge, None),
    ("embed 2048 x 4 KB", "POST", "/v1/embeddings", embed_many, None),
    ("chat 8 MB prompt", "POST", "/v1/chat/completions", chat_huge, None),
    ("deep JSON", "POST", "/v1/chat/completions", None, '{"model": "x", "messages": ' + deep + "}"),
    ("5 MB model name", "POST", "/v1/chat/completions", long_model, None),
    ("id past 2^63", "GET", f"/api/conversations/{2**63}", None, None),
    ("offset past 2^63", "GET", f"/api/knowledge/kb/documents/1/chunks?offset={2**64}", None, None),
    ("NUL in a title", "POST", "/api/conversations", {"title": "a\x00b"}, None),
    ("8 MB app prompt", "PUT", "/api/apps/soak", {"spec": app_spec}, None),
]  # fmt: skip

latency: dict[str, float] = defaultdict(float)
statuses: dict[str, set[int]] = defaultdict(set)
server_errors = 0


def send(
    client: TestClient, label: str, method: str, path: str, body: object, raw: str | None
) -> None:
    global server_errors
    started = time.perf_counter()
    if raw is not None:
        headers = {**auth, "content-type": "application/json"}
        answer = client.request(method, path, content=raw, headers=headers)
    else:
        answer = client.request(method, path, json=body, headers=auth)
    latency[label] = max(latency[label], time.perf_counter() - started)
    statuses[label].add(answer.status_code)
    server_errors += answer.status_code >= 500


app = create_app(settings)
with TestClient(app, raise_server_exceptions=False) as client:
    print(f"models loaded, RSS {rss_mb():.0f} MB", flush=True)
    for _ in range(2):  # warm-up: every kind of request, twice
        send(client, "normal chat", "POST", "/v1/chat/completions", chat_ok, None)
        send(client, "normal embedding", "POST", "/v1/embeddings", embed_ok, None)
        for label, method, path, body, raw in BAD:
            send(client, label, method, path, body, raw)
    gc.collect()
    warm = rss_mb()
    print(f"RSS after warm-up: {warm:.0f} MB", flush=True)

    rounds = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for label, method, path, body, raw in BAD:
            send(client, label, method, path, body, raw)
            send(client, "normal chat", "POST", "/v1/chat/completions", chat_ok, None)
            send(client, "normal embedding", "POST", "/v1/embeddings", embed_ok, None)
        rounds += 1
    gc.collect()
    release_memory()
    after = rss_mb()

print(f"\n{'request':<20} {'statuses':<12} {'worst s':>8}")
for label in latency:
    codes = ",".join(str(code) for code in sorted(statuses[label]))
    print(f"{label:<20} {codes:<12} {latency[label]:>8.3f}")
ratio = after / warm
print(f"\nsoak: {rounds} rounds of {len(BAD)} bad inputs in {args.seconds:.0f} s")
print(f"RSS after warm-up: {warm:.0f} MB")
print(f"RSS after soak:    {after:.0f} MB ({(ratio - 1) * 100:+.1f}%, target within +20%)")
print(f"5xx answers: {server_errors}")
sys.exit(0 if ratio <= 1.2 and server_errors == 0 else 1)
