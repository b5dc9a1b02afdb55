"""A joined runner serving a deployment through a ``llama-server`` it starts itself.

The "llama-server" here is a script on ``PATH`` that parses llama-server's
flags and execs the mock OpenAI upstream on the given host and port, so the
whole path runs for real: load (process started, health waited for, probed,
self-tested), chat and embeddings through the runner protocol, unload (the
process group stopped, checked by PID).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web

from enclave.errors import ProviderError
from enclave.providers.base import ChatMessage, Finished, GenerationRequest, TextDelta, Usage
from enclave.runners import engines
from enclave.runners.fleet import RemoteRunnerLink, RemoteRunnerProvider
from enclave.runners.join import DeploymentHost, available_engines
from enclave.runners.protocol import PREFIX
from enclave.runners.server import RunnerServer
from enclave.settings import InputLimitsConfig, RunnerConfig

T = TypeVar("T")
TOKEN = "runner-token"
FAKE_LLAMA_SERVER = """#!{python}
import argparse, os, sys
parser = argparse.ArgumentParser()
for flag in ("-m", "--host", "--port", "--alias", "-c", "--parallel", "-t", "-ngl"):
    parser.add_argument(flag)
parser.add_argument("--jinja", action="store_true")
args = parser.parse_args()
with open(os.environ["FAKE_ARGV_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if not os.path.exists(args.m):
    sys.exit("error: failed to load model " + args.m)
os.execv(sys.executable, [sys.executable, "-m", "enclave.testing.mock_upstream",
         "--host", args.host, "--port", args.port, "--models", args.alias,
         "--chunks", "3", "--delay", os.environ.get("FAKE_DELAY", "0")])
"""


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=60)

    return asyncio.run(bounded())


@pytest.fixture
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "llama-server"
    script.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGV_LOG", str(tmp_path / "argv.log"))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    return tmp_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


@asynccontextmanager
async def joined_runner(runner: RunnerConfig) -> AsyncIterator[tuple[str, DeploymentHost]]:
    host = DeploymentHost({}, runner=runner, input_limits=InputLimitsConfig())
    server = RunnerServer([], TOKEN, {}, host=host)
    app_runner = web.AppRunner(server.app(), handler_cancellation=True)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{app_runner.addresses[0][1]}", host
    finally:
        await app_runner.cleanup()
        for provider in list(host.providers.values()):  # as serve_joined does on exit
            await provider.close()


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method,
        url,
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        raw = await response.read()
        if response.content_type == "application/x-ndjson":
            return response.status, [orjson.loads(line) for line in raw.splitlines()]
        return response.status, orjson.loads(raw)


@asynccontextmanager
async def client_of(url: str) -> AsyncIterator[RemoteRunnerProvider]:
    """The control plane's side: the provider a joined runner's deployments are reached by."""
    provider = RemoteRunnerProvider("runner:r", RemoteRunnerLink("r", url, TOKEN, {}))
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def chat(model: str) -> GenerationRequest:
    return GenerationRequest(model=model, messages=[ChatMessage("user", "hello")])


def test_the_runner_offers_llama_server_where_it_is_installed_or_configured(
    fake_llama_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "llama-server" in available_engines(RunnerConfig())
    script = str(fake_llama_server / "bin" / "llama-server")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "llama-server" not in available_engines(RunnerConfig())
    assert "llama-server" in available_engines(RunnerConfig(llama_server_path=script))
    missing = RunnerConfig(llama_server_path=str(fake_llama_server / "nope"))
    assert "llama-server" not in available_engines(missing)
    assert engines.vllm_command(RunnerConfig(vllm_path=script)) == [script]


def test_load_serve_and_unload_a_llama_server_deployment(fake_llama_server: Path) -> None:
    model = str(fake_llama_server / "model.gguf")
    load = {
        "model": "big-llama",
        "source": f"file:{model}",
        "engine": "llama-server",
        "memory_gb": 1,
    }

    async def scenario() -> None:
        runner = RunnerConfig(slots=2, llama_server_args=["-ngl", "99"], start_timeout_s=30)
        async with joined_runner(runner) as (base, host), aiohttp.ClientSession() as session:
            url = base + PREFIX
            status, stats = await call(session, "POST", f"{url}/deployments", load)
            assert status == 200, stats
            provider = host.providers["big-llama"]
            assert isinstance(provider, engines.ServerEngine)
            pid = provider.process.pid
            assert pid is not None and alive(pid)
            argv = (fake_llama_server / "argv.log").read_text().split()
            assert argv[argv.index("--host") + 1] == "127.0.0.1"
            assert argv[argv.index("--alias") + 1] == "big-llama"
            assert argv[argv.index("-c") + 1] == "8192" and argv[-2:] == ["-ngl", "99"]
            caps = stats["cards"][0]["capabilities"]
            assert caps["chat"] and caps["embeddings"]  # what the mock answers to

            async with client_of(base) as client:
                stream = await client.generate(chat("big-llama"))
                events = [event async for event in stream]
                text = "".join(e.text for e in events if isinstance(e, TextDelta))
                assert text == "tok0 tok1 tok2 "
                assert events[-1] == Finished("stop", Usage(prompt_tokens=1, completion_tokens=3))
                embedded = await client.embed("big-llama", ["a", "b"])
                assert len(embedded.vectors) == 2
            assert host.served["big-llama"] >= 1

            status, _ = await call(session, "DELETE", f"{url}/deployments/big-llama")
            assert status == 200
            assert not alive(pid)
            assert "big-llama" not in host.providers

    run(scenario())


def test_a_server_that_dies_mid_stream_is_an_error_line_and_unhealthy(
    fake_llama_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    load = {
        "model": "m",
        "source": f"file:{fake_llama_server / 'model.gguf'}",
        "engine": "llama-server",
        "memory_gb": 1,
    }

    async def scenario() -> None:
        runner = RunnerConfig(self_test=False, start_timeout_s=30)
        async with joined_runner(runner) as (base, host), aiohttp.ClientSession() as session:
            url = base + PREFIX
            status, _ = await call(session, "POST", f"{url}/deployments", load)
            assert status == 200
            provider = host.providers["m"]
            assert isinstance(provider, engines.ServerEngine)
            pid = provider.process.pid
            assert pid is not None
            async with client_of(base) as client:
                stream = await client.generate(chat("m"))
                events = aiter(stream)
                assert await anext(events) == TextDelta("tok0 ")
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(ProviderError, match="llama-server broke off the stream"):
                    await anext(events)
                await stream.aclose()
            for _ in range(50):  # the socket closes a moment before the process is reaped
                health = await provider.health()
                if "exited" in health.detail:
                    break
                await asyncio.sleep(0.02)
            assert not health.ok and health.detail == "llama-server exited with code -9"

    run(scenario())


def test_a_server_that_fails_to_start_refuses_the_load_with_its_log(
    fake_llama_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = {
        "model": "m",
        "source": f"file:{fake_llama_server / 'model.gguf'}",
        "engine": "llama-server",
        "memory_gb": 1,
    }

    async def scenario() -> None:
        async with joined_runner(RunnerConfig(start_timeout_s=30)) as (base, host):
            url = base + PREFIX
            async with aiohttp.ClientSession() as session:
                (fake_llama_server / "model.gguf").unlink()
                status, body = await call(session, "POST", f"{url}/deployments", load)
                assert status == 400 and "model file not found" in body["error"]["message"]
                (fake_llama_server / "model.gguf").write_bytes(b"GGUF")
                monkeypatch.setenv("FAKE_ARGV_LOG", "/nonexistent/dir/argv.log")  # it fails
                status, body = await call(session, "POST", f"{url}/deployments", load)
            assert status == 502
            assert "exited with code 1" in body["error"]["message"]
            assert "FileNotFoundError" in body["error"]["message"]  # the end of its log
            assert host.providers == {}

    run(scenario())
