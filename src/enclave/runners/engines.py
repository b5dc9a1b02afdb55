"""Engines a runner runs as a child server: ``llama-server`` and ``vllm serve``.

A deployment with ``engine: llama-server`` or ``engine: vllm`` is served by an
OpenAI-compatible inference server that the runner starts itself:

* **on load** (:meth:`ServerEngine.start`) the runner picks a free loopback
  port, starts the server in its own process group, with its output in a log
  file, and waits for ``GET /health`` to answer 200 (both servers answer 503
  or refuse connections while loading), for at most ``runner.start_timeout_s``.
  If the server exits first, the error carries the end of its log. It then
  asks the server what it answers to (:meth:`OpenAIEngine.probe`);
* **while loaded** the server is a :class:`~enclave.providers.openai_engine.OpenAIEngine`:
  the runner protocol serves it like any provider;
* **on unload and on runner exit** (:meth:`ServerEngine.close`) the process
  group gets SIGTERM, then SIGKILL after ``STOP_GRACE_S``. On Linux the server
  also gets SIGTERM if the runner dies without closing it (``PR_SET_PDEATHSIG``).

The commands (``runner.llama_server_path`` / ``runner.vllm_path`` point at a
binary; ``runner.llama_server_args`` / ``runner.vllm_args`` are appended)::

    llama-server -m MODEL.gguf --host 127.0.0.1 --port P --alias NAME \\
                 -c N_CTX*SLOTS --parallel SLOTS --jinja [-t THREADS] ARGS...
    vllm serve MODEL --host 127.0.0.1 --port P --served-model-name NAME ARGS...

:func:`server_engines` says which of the two this machine can run: a
configured path, else ``llama-server`` on ``PATH``, and vLLM when the ``vllm``
package is importable here (its ``vllm`` script beside this interpreter, or
``python -m vllm.entrypoints.cli.main``) or a ``vllm`` binary is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from enclave.errors import ConfigError, InvalidRequest, ProviderError
from enclave.providers.base import Health
from enclave.providers.builtin import resolve_model_path
from enclave.providers.openai_engine import OpenAIEngine
from enclave.settings import RunnerConfig

log = logging.getLogger(__name__)

LLAMA_SERVER = "llama-server"
VLLM = "vllm"
SERVER_ENGINES = (LLAMA_SERVER, VLLM)
LOOPBACK = "127.0.0.1"
HEALTH_POLL_S = 0.25
STOP_GRACE_S = 10.0
LOG_TAIL_BYTES = 2000
PR_SET_PDEATHSIG = 1


# -- what is installed ---------------------------------------------------------


def llama_server_command(runner: RunnerConfig) -> list[str] | None:
    """How to start llama-server here: the configured path, or ``llama-server`` on PATH."""
    if runner.llama_server_path:
        return [runner.llama_server_path] if _executable(runner.llama_server_path) else None
    found = shutil.which(LLAMA_SERVER)
    return [found] if found else None


def vllm_command(runner: RunnerConfig) -> list[str] | None:
    """How to start ``vllm`` here: the configured path, or the installed package's CLI."""
    if runner.vllm_path:
        return [runner.vllm_path] if _executable(runner.vllm_path) else None
    if importlib.util.find_spec("vllm") is None:
        return None
    beside = Path(sys.executable).parent / "vllm"
    if _executable(str(beside)):
        return [str(beside)]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def server_engines(runner: RunnerConfig) -> list[str]:
    """The server engines this machine can start, by deployment engine name."""
    engines = []
    if llama_server_command(runner) is not None:
        engines.append(LLAMA_SERVER)
    if vllm_command(runner) is not None:
        engines.append(VLLM)
    return engines


# -- the child process ---------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the runner dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineProcess:
    """One inference server process on a loopback port, stopped by its process group."""

    def __init__(
        self,
        engine: str,
        argv: Callable[[int], list[str]],
        *,
        start_timeout_s: float,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self._argv = argv
        self.start_timeout_s = start_timeout_s
        self.health_path = health_path
        self.env = env
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def url(self) -> str:
        assert self.port is not None, "not started"
        return f"http://{LOOPBACK}:{self.port}"

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    async def start(self) -> None:
        """Start the server and wait until its health endpoint answers 200."""
        self.port = free_port()
        argv = self._argv(self.port)
        fd, name = tempfile.mkstemp(prefix=f"enclave-{self.engine}-", suffix=".log")
        self.log_path = Path(name)
        log.info("starting %s: %s (log %s)", self.engine, " ".join(argv), name)
        try:
            # Popen from the loop's thread: PR_SET_PDEATHSIG follows the thread that forked.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: vLLM's workers go with it
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                env=self.env,
            )
        except OSError as exc:
            raise ProviderError(f"{self.engine} could not be started: {exc}") from None
        finally:
            os.close(fd)
        try:
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise
        log.info("%s ready on %s (pid %d)", self.engine, self.url, self.pid)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(trust_env=False) as session:
            while True:
                code = self.exit_code()
                if code is not None:
                    raise ProviderError(
                        f"{self.engine} exited with code {code} while loading: {self.log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(self.url + self.health_path, timeout=timeout) as answer:
                        if answer.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"{self.engine} was not healthy after {self.start_timeout_s:g} s "
                        f"(runner.start_timeout_s): {self.log_tail()}"
                    )
                await asyncio.sleep(HEALTH_POLL_S)

    def log_tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                return handle.read().decode(errors="replace").strip()
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period; remove the log."""
        process = self.process
        if process is not None and process.poll() is None:
            self._signal_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.engine, process.pid)
        if process is not None:
            self._signal_group(process.pid, signal.SIGKILL)  # stragglers of the group
            await asyncio.to_thread(process.wait)
            log.info("%s (pid %d) stopped", self.engine, process.pid)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)


# -- the provider --------------------------------------------------------------


class ServerEngine(OpenAIEngine):
    """A deployment served by an inference server this runner starts and stops."""

    def __init__(self, name: str, model: str, process: EngineProcess, **kwargs: Any) -> None:
        super().__init__(name, model, base_url="http://unstarted/v1", **kwargs)
        self.process = process

    async def start(self) -> None:
        await self.process.start()
        self.base_url = self.process.url + "/v1"
        try:
            await super().start()
            await self.probe()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await super().close()
        await self.process.stop()

    async def health(self) -> Health:
        code = self.process.exit_code()
        if code is not None:
            return Health(ok=False, detail=f"{self.engine} exited with code {code}")
        return await super().health()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pid": self.process.pid, "port": self.process.port}


def build_server_engine(
    body: dict[str, Any], runner: RunnerConfig, *, chars_per_token: int
) -> ServerEngine:
    """The provider for a load request (``POST /runner/v1/deployments``) of a server engine."""
    engine, model = str(body["engine"]), str(body["model"])
    command = llama_server_command(runner) if engine == LLAMA_SERVER else vllm_command(runner)
    if engine not in SERVER_ENGINES or command is None:
        raise InvalidRequest(f"This runner cannot load the {engine} engine.", param="engine")
    try:
        weights = str(resolve_model_path(str(body["source"]).removeprefix("file:")))
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param="source") from None
    context_length: int | None = None  # vLLM: the server's max_model_len, found by the probe
    if engine == LLAMA_SERVER:
        n_ctx = context_length = int(body.get("n_ctx") or 4096)
        extra = list(runner.llama_server_args)
        threads = ["-t", str(runner.threads)] if runner.threads else []

        def argv(port: int) -> list[str]:
            return [
                *command, "-m", weights, "--host", LOOPBACK, "--port", str(port),
                "--alias", model, "-c", str(n_ctx * runner.slots),
                "--parallel", str(runner.slots), "--jinja", *threads, *extra,
            ]  # fmt: skip
    else:
        extra = list(runner.vllm_args)

        def argv(port: int) -> list[str]:
            return [
                *command, "serve", weights, "--host", LOOPBACK, "--port", str(port),
                "--served-model-name", model, *extra,
            ]  # fmt: skip

    process = EngineProcess(engine, argv, start_timeout_s=runner.start_timeout_s)
    return ServerEngine(
        model,
        model,
        process,
        engine=engine,
        context_length=context_length,
        chars_per_token=chars_per_token,
        queue_size=runner.queue_size,
    )
