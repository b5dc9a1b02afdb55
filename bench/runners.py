"""The local runner's costs: decode speed through it, recovery after SIGKILL, bf16 embedding.

Plain and linear. The client side runs on uvloop, as the control plane does
under uvicorn. In one run, on this machine:

  a. decode tokens/s of one stream through a runner process (RunnerProvider ->
     HTTP -> LlamaCppProvider) against llama-cpp-python called directly in this
     process, same GGUF, same threads, same prompt and sampling, interleaved
     (runner, direct, runner, direct, ...) after a warm-up each; first token to
     last token. Target: runner/direct >= 0.95.
  b. time from SIGKILL of the runner until the next answer (a 4-token generation
     admitted through the same RunnerProvider, which waits for the restart).
  c. aggregate tokens/s of --streams concurrent streams against one stream, through
     a runner with that many slots (threads per slot: cores / slots, the default)
     and directly (as many Llama contexts with those threads, one thread each),
     interleaved; tokens over the wall time from the first request to the last
     token, prompt included.
  d. the embedder (all-MiniLM-L6-v2) in float32 and in bf16 autocast: chunks/s
     on the same chunks, and the lowest cosine between the two.

    .venv/bin/python bench/runners.py
    .venv/bin/python bench/runners.py --reps 7 --max-tokens 256
"""

import argparse
import asyncio
import os
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import llama_cpp
import numpy as np
import uvloop
from llama_cpp import Llama

from enclave.providers.base import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from enclave.providers.builtin import resolve_model_path
from enclave.providers.llamacpp import MIN_P, TOP_K
from enclave.providers.runner_client import RunnerProvider
from enclave.providers.sentence_transformers import SentenceTransformersProvider
from enclave.runners.cpu import cpu_path, read_cpu_flags
from enclave.runners.supervisor import LocalRunner
from enclave.settings import InputLimitsConfig, ModelConfig, ProviderConfig, RunnerConfig

# -----------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--reps", type=int, default=5, help="measured reps per side in (a)")
parser.add_argument("--max-tokens", type=int, default=128)
parser.add_argument("--streams", type=int, default=8, help="concurrent streams in (c)")
parser.add_argument("--stream-reps", type=int, default=3, help="measured reps per side in (c)")
parser.add_argument("--kills", type=int, default=3, help="SIGKILLs measured in (b)")
parser.add_argument("--chunks", type=int, default=128, help="chunks embedded per rep in (d)")
parser.add_argument("--seed", type=int, default=1234)
args = parser.parse_args()

cores = len(os.sched_getaffinity(0))
RUNNER = RunnerConfig(slots=1, threads=cores)
SLOTS = RunnerConfig(slots=args.streams)  # threads per slot: cores // slots, at least 1
SLOT_THREADS = max(1, cores // args.streams)
MODEL = ModelConfig(name="smollm2-135m", path="builtin:smollm2", n_ctx=2048)
PROVIDER = ProviderConfig(name="local", type="llamacpp", models=[MODEL])
MESSAGES = [
    ChatMessage("system", "You are a helpful assistant who writes long, detailed answers."),
    ChatMessage("user", "Write a long essay about the history of bread. Use many paragraphs."),
]
print(f"CPU path {cpu_path(read_cpu_flags())}, {cores} cores, {RUNNER.threads} threads")

# -----------------------------------------------------------------------------
# the direct side: llama-cpp-python in this process, same prompt tokens and sampling


def load_llama(threads: int) -> Llama:
    return Llama(
        model_path=str(resolve_model_path(MODEL.path or "")),
        n_ctx=MODEL.n_ctx,
        n_batch=RUNNER.n_batch,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


llama = load_llama(cores)


def run_direct(tokens: list[int], seed: int, llama: Llama = llama) -> tuple[int, float]:
    """(tokens decoded, seconds from first to last token) for one generation."""
    llama.set_seed(seed)
    vocab = llama._model.vocab
    stamps = []
    for token in llama.generate(
        tokens, top_k=TOP_K, top_p=1.0, min_p=MIN_P, temp=0.7, repeat_penalty=1.0
    ):
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(stamps) >= args.max_tokens:
            break
        llama.detokenize([token])
        stamps.append(time.perf_counter())
    return len(stamps), stamps[-1] - stamps[0]


def direct_streams(slots: list[Llama], tokens: list[int], seed: int) -> float:
    """Aggregate tokens/s of one generation on each of ``slots`` at once, one thread each."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(slots)) as pool:
        counts = list(
            pool.map(lambda i: run_direct(tokens, seed + i, slots[i])[0], range(len(slots)))
        )
    return sum(counts) / (time.perf_counter() - started)


async def runner_streams(provider: RunnerProvider, streams: int, seed: int) -> float:
    """Aggregate tokens/s of ``streams`` concurrent generations through ``provider``."""
    started = time.perf_counter()
    results = await asyncio.gather(*(run_runner(provider, seed + i) for i in range(streams)))
    return sum(n for n, _, _ in results) / (time.perf_counter() - started)


async def run_runner(provider: RunnerProvider, rep: int) -> tuple[int, float, list[int]]:
    request = GenerationRequest(
        model=MODEL.name,
        messages=MESSAGES,
        sampling=SamplingParams(max_tokens=args.max_tokens, temperature=0.7, seed=args.seed + rep),
    )
    stamps, tokens = [], 0
    async for event in await provider.generate(request):
        if isinstance(event, TextDelta):
            stamps.append(time.perf_counter())
        elif isinstance(event, Finished):
            tokens = event.usage.completion_tokens
    return tokens, stamps[-1] - stamps[0], []


def prompt_tokens() -> list[int]:
    from enclave.chat.template import ChatTemplate

    vocab = llama._model.vocab
    bos, eos = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
    template = ChatTemplate(
        llama.metadata.get("tokenizer.chat_template"),
        bos_token=llama._model.token_get_text(bos) if bos >= 0 else "",
        eos_token=llama._model.token_get_text(eos) if eos >= 0 else "",
    )
    prompt = template.render(MESSAGES)
    if llama_cpp.llama_vocab_get_add_bos(vocab) and prompt.startswith(template.bos_token):
        prompt = prompt[len(template.bos_token) :]
    return llama.tokenize(prompt.encode(), add_bos=True, special=True)


async def main() -> None:
    supervisor = LocalRunner("local", [PROVIDER], RUNNER, InputLimitsConfig())
    provider = RunnerProvider("local", supervisor, restart_wait_s=120)
    started = time.perf_counter()
    await provider.start()
    print(f"runner ready in {time.perf_counter() - started:.1f} s (pid {supervisor.pid})")
    tokens = prompt_tokens()

    # -- a. decode tokens/s, interleaved after one warm-up each
    print("\n== a. decode tokens/s, one stream (first to last token)")
    await run_runner(provider, -1)
    run_direct(tokens, args.seed - 1)
    via_runner, direct = [], []
    for rep in range(args.reps):
        n, seconds, _ = await run_runner(provider, rep)
        via_runner.append((n - 1) / seconds)
        n, seconds = await asyncio.to_thread(run_direct, tokens, args.seed + rep)
        direct.append((n - 1) / seconds)
    r, d = statistics.median(via_runner), statistics.median(direct)
    print(f"runner: {' '.join(f'{x:.1f}' for x in via_runner)} tok/s, median {r:.1f}")
    print(f"direct: {' '.join(f'{x:.1f}' for x in direct)} tok/s, median {d:.1f}")
    print(f"runner/direct = {r / d:.3f}  (target >= 0.95)")

    # -- b. SIGKILL until the next answer
    print("\n== b. SIGKILL of the runner until the next answer")
    recoveries = []
    for _ in range(args.kills):
        os.kill(supervisor.pid or 0, signal.SIGKILL)
        killed = time.perf_counter()
        while True:
            try:
                stream = await provider.generate(
                    GenerationRequest(
                        model=MODEL.name, prompt="Hello", sampling=SamplingParams(max_tokens=4)
                    )
                )
                async for _ in stream:
                    pass
                break
            except Exception:  # the old runner's connection, or still restarting
                await asyncio.sleep(0.01)
        recoveries.append(time.perf_counter() - killed)
        await asyncio.sleep(STABLE_PAUSE_S)
    print(f"recovery: {' '.join(f'{x:.2f}' for x in recoveries)} s")
    print(f"median {statistics.median(recoveries):.2f} s (restarts so far: {supervisor.restarts})")
    await provider.close()

    # -- c. concurrent streams against one stream, same slots, interleaved (after the
    # one-slot runner is closed, so two runners never share the cores)
    n = args.streams
    print(
        f"\n== c. aggregate tokens/s, {n} concurrent streams against 1 ({n} slots x "
        f"{SLOT_THREADS} thread{'s' if SLOT_THREADS > 1 else ''})"
    )
    supervisor = LocalRunner("local", [PROVIDER], SLOTS, InputLimitsConfig())
    provider = RunnerProvider("local", supervisor, restart_wait_s=120)
    await provider.start()
    slots = [load_llama(SLOT_THREADS) for _ in range(n)]
    await runner_streams(provider, n, args.seed)  # warm-up: every slot once
    await asyncio.to_thread(direct_streams, slots, tokens, args.seed)
    rates: dict[str, list[float]] = {
        "runner 1": [],
        f"runner {n}": [],
        "direct 1": [],
        f"direct {n}": [],
    }
    for rep in range(args.stream_reps):
        seed = args.seed + 100 * rep
        rates["runner 1"].append(await runner_streams(provider, 1, seed))
        rates["direct 1"].append(await asyncio.to_thread(direct_streams, slots[:1], tokens, seed))
        rates[f"runner {n}"].append(await runner_streams(provider, n, seed))
        rates[f"direct {n}"].append(await asyncio.to_thread(direct_streams, slots, tokens, seed))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    for key, values in rates.items():
        print(f"{key:>9}: {' '.join(f'{x:.1f}' for x in values)} tok/s, median {medians[key]:.1f}")
    print(
        f"{n} streams / 1: runner {medians[f'runner {n}'] / medians['runner 1']:.2f}, "
        f"direct {medians[f'direct {n}'] / medians['direct 1']:.2f}; runner/direct at {n} "
        f"streams = {medians[f'runner {n}'] / medians[f'direct {n}']:.3f}"
    )
    await provider.close()
    del slots


STABLE_PAUSE_S = 0.5
uvloop.run(main())

# -----------------------------------------------------------------------------
# d. the embedder, float32 against bf16 autocast, same chunks


async def embed_rates() -> None:
    print("\n== d. embedder chunks/s, float32 against bf16 autocast (all-MiniLM-L6-v2)")
    rng = np.random.default_rng(args.seed)
    words = ["".join(rng.choice(list("abcdefghijklmnoprstu"), size=6)) for _ in range(3000)]
    chunks = [
        " ".join(rng.choice(words, size=int(rng.integers(40, 170)))) for _ in range(args.chunks)
    ]
    config = ModelConfig(name="mini", path="builtin:all-minilm-l6-v2", n_ctx=256)
    results: dict[str, tuple[float, np.ndarray]] = {}
    providers = {}
    for dtype in ("float32", "bfloat16"):
        provider = SentenceTransformersProvider("embed", [config], 64, dtype=dtype)
        await provider.start()
        await provider.embed("mini", chunks[:32], priority="bulk")  # warm-up
        providers[dtype] = provider
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(3):  # interleaved
        for dtype, provider in providers.items():
            started = time.perf_counter()
            result = await provider.embed("mini", chunks, priority="bulk")
            rates[dtype].append(len(chunks) / (time.perf_counter() - started))
            results[dtype] = (0.0, np.array(result.vectors))
    for dtype, values in rates.items():
        print(
            f"{dtype}: {' '.join(f'{x:.1f}' for x in values)} chunks/s, median "
            f"{statistics.median(values):.1f}"
        )
    a, b = results["float32"][1], results["bfloat16"][1]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ratio = statistics.median(rates["bfloat16"]) / statistics.median(rates["float32"])
    print(
        f"bf16/float32 = {ratio:.2f}; cosine min {cosine.min():.5f}, median "
        f"{np.median(cosine):.5f} (target >= 0.999)"
    )
    for provider in providers.values():
        await provider.close()


asyncio.run(embed_rates())
