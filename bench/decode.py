"""Decode speed of `enclave serve` against llama-cpp-python called directly.

Starts `enclave serve` on a free loopback port, loads the same GGUF in this
process with the threads of one server slot, then measures, interleaved
(server, direct, server, direct, ...) after one warm-up each:

  a. single-stream decode tokens/s (streamed; first token to last token)
  b. time to first token for a ~200-token prompt
  c. aggregate tokens/s of N concurrent streams through the server
  d. an editor completion: TTFT and p50 latency of a 30-token /v1/completions
     (with suffix, fill-in-the-middle, where the model has FIM tokens)

Both sides get the same prompt tokens (the server's own chat template),
sampling (temperature, top_p, TOP_K, MIN_P, seed, repeat_penalty 1.0) and
max_tokens. EOS cannot be ignored over HTTP, so actual tokens are counted:
the server's from `usage` (stream_options.include_usage), the direct side's
from the sampler. Each rep puts a different number at the start of the
prompt, so neither side gets a prefix-cache hit from the previous rep.

    .venv/bin/python bench/decode.py                        # slots=2, threads=cores/slots
    .venv/bin/python bench/decode.py --slots 1 --threads 2 --json out.json
"""

import argparse
import asyncio
import codecs
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import llama_cpp
from llama_cpp import Llama

from enclave.chat.template import ChatTemplate
from enclave.providers.base import ChatMessage
from enclave.providers.builtin import resolve_model_path
from enclave.providers.llamacpp import MIN_P, TOP_K
from enclave.settings import ModelConfig, RunnerConfig

# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--slots", type=int, default=None, help="ENCLAVE_RUNNER__SLOTS")
parser.add_argument("--threads", type=int, default=None, help="ENCLAVE_RUNNER__THREADS")
parser.add_argument("--reps", type=int, default=5, help="measured reps per side (a, b)")
parser.add_argument("--max-tokens", type=int, default=128)
parser.add_argument("--ttft-prompt-tokens", type=int, default=200)
parser.add_argument("--ttft-max-tokens", type=int, default=8)
parser.add_argument("--concurrency", type=int, default=8)
parser.add_argument("--conc-reps", type=int, default=3, help="measured rounds of (c)")
parser.add_argument("--temperature", type=float, default=0.7)
parser.add_argument("--seed", type=int, default=1234)
parser.add_argument(
    "--direct",
    choices=["completion", "generate"],
    default="completion",
    help="direct side: Llama.create_completion(stream=True) or a bare Llama.generate loop",
)
parser.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
parser.add_argument("--editor-reps", type=int, default=10, help="measured reps of (d)")
args = parser.parse_args()

MODEL = "smollm2-135m"
RUNNER = RunnerConfig()  # the server's defaults
N_CTX = ModelConfig.model_fields["n_ctx"].default
slots = args.slots or RUNNER.slots
threads = args.threads or max(1, (os.cpu_count() or 1) // slots)
SAMPLING = dict(temperature=args.temperature, top_p=1.0, seed=args.seed)
WRITER = "You are a helpful assistant who writes long, detailed answers."
ESSAY = (
    "Write a long, detailed essay about the history of bread, from ancient Egypt to "
    "modern bakeries. Use many paragraphs."
)
FILLER = (
    "The committee met on Tuesday to review the quarterly figures for the northern region. "
    "Sales of winter equipment rose while garden tools fell, as they do every year. "
    "The warehouse in the harbour district reported two late deliveries and one damaged "
    "pallet. Staff asked for better lighting in the loading bay and a second forklift. "
)

# -----------------------------------------------------------------------------
# the direct side: same GGUF, same threads as one slot, same prompt rendering

path = resolve_model_path("builtin:smollm2")
llama = Llama(
    model_path=str(path),
    n_ctx=N_CTX,
    n_batch=RUNNER.n_batch,
    n_threads=threads,
    n_threads_batch=threads,
    verbose=False,
)
vocab = llama._model.vocab
bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
template = ChatTemplate(
    llama.metadata.get("tokenizer.chat_template"),
    bos_token=llama._model.token_get_text(bos) if bos >= 0 else "",
    eos_token=llama._model.token_get_text(eos) if eos >= 0 else "",
)
strip_bos = template.bos_token if llama_cpp.llama_vocab_get_add_bos(vocab) else ""


def tokens_for(messages):
    """Prompt tokens exactly as LocalModel.admit makes them."""
    prompt = template.render([ChatMessage(m["role"], m["content"]) for m in messages])
    if strip_bos and prompt.startswith(strip_bos):
        prompt = prompt[len(strip_bos) :]
    return llama.tokenize(prompt.encode(), add_bos=True, special=True)


def essay_messages(n):
    return [
        {"role": "system", "content": f"Request {n}. {WRITER}"},
        {"role": "user", "content": ESSAY},
    ]


def long_messages(n):
    """About --ttft-prompt-tokens prompt tokens, different from the start for each n."""
    words = (FILLER * 20).split()
    lo, hi = 1, len(words)
    while lo < hi:  # fewest words whose prompt reaches the target
        mid = (lo + hi) // 2
        user = " ".join(words[:mid]) + "\nSummarise the notes above."
        messages = [
            {"role": "system", "content": f"Request {n}."},
            {"role": "user", "content": user},
        ]
        if len(tokens_for(messages)) >= args.ttft_prompt_tokens:
            hi = mid
        else:
            lo = mid + 1
    user = " ".join(words[:lo]) + "\nSummarise the notes above."
    return [{"role": "system", "content": f"Request {n}."}, {"role": "user", "content": user}]


def run_direct(messages, max_tokens):
    """One streamed generation; returns a result dict like run_server's."""
    tokens = tokens_for(messages)
    stamps, pieces, sampled = [], [], [0]
    finish = "length"
    start = time.perf_counter()
    if args.direct == "completion":

        def count(_ids, _logits):
            sampled[0] += 1
            return False

        stream = llama.create_completion(
            tokens,
            max_tokens=max_tokens,
            top_k=TOP_K,
            min_p=MIN_P,
            repeat_penalty=1.0,
            stream=True,
            stopping_criteria=llama_cpp.StoppingCriteriaList([count]),
            **SAMPLING,
        )
        for chunk in stream:
            choice = chunk["choices"][0]
            if choice["text"]:
                stamps.append(time.perf_counter())
                pieces.append(choice["text"])
            finish = choice["finish_reason"] or finish
        # generate() calls the criteria once per sampled token (the end-of-generation
        # token too, which is no completion token); create_completion once more at the end.
        n = sampled[0] - 1 - (finish == "stop")
    else:
        llama.set_seed(args.seed)
        n = 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        generator = llama.generate(
            tokens,
            top_k=TOP_K,
            top_p=SAMPLING["top_p"],
            min_p=MIN_P,
            temp=SAMPLING["temperature"],
            repeat_penalty=1.0,
        )
        for token in generator:
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            n += 1
            piece = decoder.decode(llama.detokenize([token]))
            if piece:
                stamps.append(time.perf_counter())
                pieces.append(piece)
            if n >= max_tokens:
                break
        generator.close()
    end = time.perf_counter()
    return dict(
        start=start,
        end=end,
        stamps=stamps,
        tokens=n,
        prompt_tokens=len(tokens),
        text="".join(pieces),
        finish=finish,
    )


# -----------------------------------------------------------------------------
# the server side

home = tempfile.TemporaryDirectory(prefix="enclave-bench-")
admin_key = "ek-bench-" + secrets.token_hex(16)
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
env = {key: value for key, value in os.environ.items() if not key.startswith("ENCLAVE_")}
env.update(ENCLAVE_HOME=home.name, ENCLAVE_ADMIN_KEY=admin_key)
if args.slots is not None:
    env["ENCLAVE_RUNNER__SLOTS"] = str(args.slots)
if args.threads is not None:
    env["ENCLAVE_RUNNER__THREADS"] = str(args.threads)
enclave = Path(sys.executable).parent / "enclave"
log_path = Path(home.name) / "server.log"
url = f"http://127.0.0.1:{port}"
headers = {"Authorization": f"Bearer {admin_key}"}


def body(messages, max_tokens):
    return dict(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLING,
    )


def handle_line(line, result):
    """Parse one SSE line into result; True when it carried token text."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    event = json.loads(line[6:])
    if "error" in event:
        raise RuntimeError(f"server error mid-stream: {event['error']}")
    if event.get("usage"):
        result["tokens"] = event["usage"]["completion_tokens"]
        result["prompt_tokens"] = event["usage"]["prompt_tokens"]
    for choice in event.get("choices", []):
        result["finish"] = choice.get("finish_reason") or result["finish"]
        text = choice["delta"].get("content")
        if text:
            result["pieces"].append(text)
            return True
    return False


def new_result():
    return dict(stamps=[], pieces=[], tokens=None, prompt_tokens=None, finish=None)


def finish_result(result, start, end):
    result.update(start=start, end=end, text="".join(result.pop("pieces")))
    return result


def run_server(client, messages, max_tokens):
    result = new_result()
    start = time.perf_counter()
    with client.stream("POST", "/v1/chat/completions", json=body(messages, max_tokens)) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if handle_line(line, result):
                result["stamps"].append(time.perf_counter())
    return finish_result(result, start, time.perf_counter())


async def run_server_async(client, messages, max_tokens):
    result = new_result()
    start = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body(messages, max_tokens)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if handle_line(line, result):
                result["stamps"].append(time.perf_counter())
    return finish_result(result, start, time.perf_counter())


async def concurrent_round(first_n):
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=300, limits=limits
    ) as client:
        jobs = [
            run_server_async(client, essay_messages(first_n + i), args.max_tokens)
            for i in range(args.concurrency)
        ]
        return await asyncio.gather(*jobs, return_exceptions=True)


CODE = "import math\n\n\ndef area_of_circle_{n}(radius: float) -> float:\n    return "
TAIL = "\n\n\nprint(area_of_circle_{n}(2.0))\n"


def run_editor(client, n, fim):
    """d. One editor completion: streamed /v1/completions of 30 tokens after a code
    prefix, with the text after the cursor as ``suffix`` where the model can infill."""
    request = dict(model=MODEL, prompt=CODE.format(n=n), max_tokens=30, stream=True, **SAMPLING)
    request["stream_options"] = {"include_usage": True}
    if fim:
        request["suffix"] = TAIL.format(n=n)
    result = new_result()
    start = time.perf_counter()
    with client.stream("POST", "/v1/completions", json=request) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if event.get("usage"):
                    result["tokens"] = event["usage"]["completion_tokens"]
                if any(choice.get("text") for choice in event.get("choices", [])):
                    result["stamps"].append(time.perf_counter())
    return finish_result(result, start, time.perf_counter())


def decode_tps(r):
    """Tokens/s from first to last streamed token: (tokens - 1) intervals."""
    span = r["stamps"][-1] - r["stamps"][0] if len(r["stamps"]) > 1 else 0.0
    return (r["tokens"] - 1) / span if span > 0 else float("nan")


def wall_tps(r):
    return r["tokens"] / (r["end"] - r["start"])


def ttft_ms(r):
    return 1000 * (r["stamps"][0] - r["start"]) if r["stamps"] else float("nan")


def med(values):
    return statistics.median(values) if values else float("nan")


# -----------------------------------------------------------------------------
print(
    f"model {path.name}  cores {os.cpu_count()}  slots {slots}  threads/slot {threads}  "
    f"direct={args.direct}  reps {args.reps}  max_tokens {args.max_tokens}"
)
process = subprocess.Popen(
    [str(enclave), "serve", "--port", str(port)],
    env=env,
    stdout=log_path.open("w"),
    stderr=subprocess.STDOUT,
)
try:
    t0 = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"enclave serve exited early:\n{log_path.read_text()}")
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"enclave serve not ready in 120 s:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    print(f"server ready in {time.monotonic() - t0:.1f} s")
    client = httpx.Client(base_url=url, headers=headers, timeout=300)
    for provider in client.get("/api/providers").json():
        state = provider.get("state") or {}
        if MODEL in state:  # check the server runs the slots x threads we compare against
            info = state[MODEL]
            print(f"server {MODEL}: {info['slots']} slots x {info['threads']} threads")
            if (info["slots"], info["threads"]) != (slots, threads):
                print(f"WARNING: direct side uses {threads} threads; the comparison is unfair")

    # a. single-stream decode, interleaved
    server_a, direct_a = [], []
    for rep in range(args.reps + 1):  # rep 0 is the warm-up
        messages = essay_messages(rep)
        s = run_server(client, messages, args.max_tokens)
        d = run_direct(messages, args.max_tokens)
        if rep:
            server_a.append(s)
            direct_a.append(d)
    pairs_a = list(zip(server_a, direct_a, strict=True))
    same_prompt = all(s["prompt_tokens"] == d["prompt_tokens"] for s, d in pairs_a)
    same_text = sum(s["text"] == d["text"] for s, d in pairs_a)

    # b. time to first token, ~200-token prompt, interleaved
    server_b, direct_b = [], []
    for rep in range(args.reps + 1):
        messages = long_messages(1000 + rep)
        s = run_server(client, messages, args.ttft_max_tokens)
        d = run_direct(messages, args.ttft_max_tokens)
        if rep:
            server_b.append(s)
            direct_b.append(d)

    # c. concurrent streams through the server
    rounds = []
    for rep in range(args.conc_reps + 1):
        results = asyncio.run(concurrent_round(2000 + 100 * rep))
        if rep:
            rounds.append(results)
    # d. editor completion: 30 tokens, suffix (FIM) where the model has FIM tokens
    probe = dict(model=MODEL, prompt="x", suffix="y", max_tokens=1)
    fim = client.post("/v1/completions", json=probe).status_code == 200
    editor = [run_editor(client, 3000 + rep, fim) for rep in range(args.editor_reps + 1)][1:]
    client.close()
finally:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    home.cleanup()

# -----------------------------------------------------------------------------
dec_server = med([decode_tps(r) for r in server_a])
dec_direct = med([decode_tps(r) for r in direct_a])
wall_server = med([wall_tps(r) for r in server_a])
wall_direct = med([wall_tps(r) for r in direct_a])
ttft_server = med([ttft_ms(r) for r in server_b])
ttft_direct = med([ttft_ms(r) for r in direct_b])
aggregates, completed, stream_decode, stream_ttft = [], [], [], []
for results in rounds:
    ok = [r for r in results if isinstance(r, dict) and r["tokens"]]
    completed.append(len(ok))
    for r in results:
        if not isinstance(r, dict):
            print(f"concurrent stream failed: {r!r}")
    if ok:
        span = max(r["end"] for r in ok) - min(r["start"] for r in ok)
        aggregates.append(sum(r["tokens"] for r in ok) / span)
        stream_decode += [decode_tps(r) for r in ok]
        stream_ttft += [ttft_ms(r) for r in ok]
agg = med(aggregates)
editor_ttft = med([ttft_ms(r) for r in editor])
editor_p50 = med([1000 * (r["end"] - r["start"]) for r in editor])
n = args.concurrency

rows = [
    ("a. decode tok/s, first->last token (median)", dec_server, dec_direct),
    ("   ratio server/direct (target >= 0.90)", dec_server / dec_direct, None),
    ("   wall tok/s, tokens / (start->end) (median)", wall_server, wall_direct),
    (
        "   completion tokens per request (median)",
        med([r["tokens"] for r in server_a]),
        med([r["tokens"] for r in direct_a]),
    ),
    ("   prompt tokens identical / texts identical", f"{same_prompt}", f"{same_text}/{args.reps}"),
    (f"b. TTFT p50 ms, {server_b[0]['prompt_tokens']}-token prompt", ttft_server, ttft_direct),
    ("   TTFT difference server-direct ms", ttft_server - ttft_direct, None),
    (f"c. {n} streams aggregate tok/s, tokens/(first start->last end)", agg, None),
    ("   single-stream wall tok/s from (a), same definition", wall_server, None),
    ("   aggregate / single-stream wall", agg / wall_server, None),
    (f"   per-stream decode tok/s under {n}-way load (median)", med(stream_decode), None),
    (
        f"   TTFT under {n}-way load, median / max ms",
        med(stream_ttft),
        max(stream_ttft, default=float("nan")),
    ),
    (f"   streams completed per round (of {n})", "/".join(map(str, completed)), None),
    (f"d. editor completion TTFT p50 ms (fim {'on' if fim else 'off'})", editor_ttft, None),
    ("   editor completion latency p50 ms, 30 tokens", editor_p50, None),
    ("   completion tokens per editor request (median)", med([r["tokens"] for r in editor]), None),
]


def cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 3 else f"{value:.1f}"
    return str(value)


print()
print(f"{'':64s} {'server':>10s} {'direct':>10s}")
for label, server_value, direct_value in rows:
    print(f"{label:64s} {cell(server_value):>10s} {cell(direct_value):>10s}")
print(
    "a per rep (server | direct) decode tok/s:",
    " ".join(f"{decode_tps(s):.1f}|{decode_tps(d):.1f}" for s, d in pairs_a),
)
print(
    "b per rep (server | direct) TTFT ms:",
    " ".join(f"{ttft_ms(s):.0f}|{ttft_ms(d):.0f}" for s, d in zip(server_b, direct_b, strict=True)),
)
print(f"c per round aggregate tok/s: {' '.join(f'{a:.1f}' for a in aggregates)}")

summary = dict(
    slots=slots,
    threads=threads,
    cores=os.cpu_count(),
    direct=args.direct,
    reps=args.reps,
    max_tokens=args.max_tokens,
    decode_tps_server=round(dec_server, 2),
    decode_tps_direct=round(dec_direct, 2),
    decode_ratio=round(dec_server / dec_direct, 3),
    wall_tps_server=round(wall_server, 2),
    wall_tps_direct=round(wall_direct, 2),
    texts_identical=same_text,
    prompt_tokens_identical=same_prompt,
    ttft_prompt_tokens=server_b[0]["prompt_tokens"],
    ttft_p50_ms_server=round(ttft_server, 1),
    ttft_p50_ms_direct=round(ttft_direct, 1),
    ttft_diff_ms=round(ttft_server - ttft_direct, 1),
    concurrency=n,
    aggregate_tps=round(agg, 2),
    aggregate_over_single_wall=round(agg / wall_server, 3),
    completed=completed,
    editor_fim=fim,
    editor_ttft_p50_ms=round(editor_ttft, 1),
    editor_latency_p50_ms=round(editor_p50, 1),
)
line = json.dumps(summary)
print(line)
if args.json:
    args.json.write_text(line + "\n")
