"""The local runner: a supervised child process that hosts embedded engines.

``enclave serve`` (with ``runner.mode: process``) starts one
:class:`LocalRunner` per embedded provider, so the chat model and the embedder
each have their own process: a crash in one engine takes neither the gateway
nor the other engine with it, and chat and ingestion never queue behind each
other. The control plane reaches each through a
:class:`~enclave.providers.runner_client.RunnerProvider`.

Lifecycle of one runner::

    starting --(loaded, self-tested, listening)--> ready --(exit)--> restarting
       ^                                                                 |
       +------------------- after the backoff delay ---------------------+

The child is ``python -m enclave.runners.server``. It gets a fresh random
bearer token and its spec (the provider entries and runner settings) as one
JSON line on stdin, binds a free loopback port, and reports its URL on stdout
once ready. Its stderr is passed through to the control plane's log, and the
last lines are kept as the exit reason's context. The child exits when its
stdin closes, so it never outlives the control plane.

When the child exits, its connections close, so every request in flight fails
at once (the client turns that into a 502 or an SSE error event). The runner
is started again after a delay that doubles from 0.5 s up to
``runner.restart_backoff_max_s`` and falls back to 0.5 s once a runner has
stayed up for a minute. If a runner is killed by a signal before its first
ready with ``runner.extra_buffer_types: auto``, the next start turns llama.cpp's
extra buffer types off: a CPU path that crashes the self-test is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from typing import Any, Literal

import orjson

from enclave.errors import ProviderError
from enclave.providers.base import ModelCard
from enclave.runners.protocol import card_from_wire
from enclave.settings import InputLimitsConfig, ProviderConfig, RunnerConfig

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "ready", "restarting", "failed"]
FIRST_BACKOFF_S = 0.5
STABLE_AFTER_S = 60.0
STDERR_LINES = 20
# Progress bars of model loading and encoding would flood the control plane's log.
CHILD_ENVIRONMENT = {
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGABRT, signal.SIGFPE}


def exit_reason(returncode: int) -> str:
    """A sentence for a child's exit status (negative: the signal that killed it)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


class RunnerStartFailed(ProviderError):
    """A runner did not become ready (it exited, or took longer than start_timeout_s)."""


class LocalRunner:
    """One runner child process: started, watched and restarted with backoff."""

    def __init__(
        self,
        name: str,
        providers: list[ProviderConfig],
        runner: RunnerConfig,
        input_limits: InputLimitsConfig,
        *,
        log_level: str = "info",
    ) -> None:
        self.name = name
        self.providers = providers
        self.config = runner
        self.input_limits = input_limits
        self.log_level = log_level
        self.token = ""
        self.url: str | None = None
        self.pid: int | None = None
        self.state: State = "stopped"
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_exit_at: float | None = None
        self.ready_at: float | None = None
        self.cpu: dict[str, Any] = {}
        self.cards: dict[str, list[ModelCard]] = {}
        self.extra_buffer_types = runner.extra_buffer_types
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._process: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._start_lock = asyncio.Lock()
        self._relays: set[asyncio.Task[None]] = set()

    # -- what clients read ---------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "url": self.url,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "up_s": round(time.monotonic() - self.ready_at, 1) if self.ready_at else None,
            "cpu": self.cpu,
        }

    def unavailable(self) -> str:
        """Why the runner cannot take a request now, in one sentence."""
        why = f"runner '{self.name}' is {self.state}"
        if self.last_exit:
            why += f" (last exit: {self.last_exit}; restarts: {self.restarts})"
        return why

    async def wait_ready(self, timeout: float) -> bool:
        if self.state == "ready":
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.state == "ready"

    async def exit_reason(self, timeout: float) -> str:
        """The reason the current process exited, waiting up to ``timeout`` to learn it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), timeout)
        return self.last_exit or "the connection to it broke"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the child and wait for its first ready; raise if it never gets there."""
        async with self._start_lock:
            if self._task is not None:
                return
            try:
                await self._launch()
            except RunnerStartFailed as first:
                if not self._should_retry_safe():
                    self.state = "failed"
                    raise
                log.warning(
                    "runner %s crashed before it was ready (%s); starting it again with "
                    "llama.cpp extra buffer types off",
                    self.name,
                    first.message,
                )
                self.extra_buffer_types = "off"
                await self._launch()
            self._task = asyncio.create_task(self._supervise(), name=f"runner-{self.name}")

    def _should_retry_safe(self) -> bool:
        code = self._process.returncode if self._process is not None else None
        return (
            self.extra_buffer_types == "auto"
            and code is not None
            and code < 0
            and signal.Signals(-code) in CRASH_SIGNALS
        )

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._stop_process()
        self.state = "stopped"

    async def _stop_process(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    def _spec(self) -> dict[str, Any]:
        runner = self.config.model_dump(mode="json")
        runner["extra_buffer_types"] = self.extra_buffer_types
        return {
            "providers": [config.model_dump(mode="json") for config in self.providers],
            "runner": runner,
            "input_limits": self.input_limits.model_dump(mode="json"),
        }

    async def _launch(self) -> None:
        """Start one child and wait until it is ready (or raise RunnerStartFailed)."""
        self.state = "starting" if self.restarts == 0 and self.last_exit is None else "restarting"
        self._ready.clear()
        self._exited.clear()
        self.url = None
        self.token = secrets.token_urlsafe(32)
        process = self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "enclave.runners.server",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **CHILD_ENVIRONMENT},
        )
        self.pid = process.pid
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        first = {"token": self.token, "spec": self._spec(), "log_level": self.log_level}
        process.stdin.write(orjson.dumps(first) + b"\n")
        await process.stdin.drain()  # stdin stays open: its end tells the child we are gone
        relay = asyncio.create_task(self._relay_stderr(process.stderr), name=f"{self.name}-log")
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        started = time.monotonic()
        try:
            ready = await asyncio.wait_for(
                self._read_ready(process.stdout), self.config.start_timeout_s
            )
        except TimeoutError:
            await self._stop_process()
            self.last_exit = f"not ready after {self.config.start_timeout_s:g} s"
            self.last_exit_at = time.time()
            raise self._start_failed(self.last_exit) from None
        if ready is None:
            code = await process.wait()
            self._record_exit(code)
            raise self._start_failed(exit_reason(code))
        self.url = str(ready["url"])
        self.cpu = dict(ready.get("cpu") or {})
        await self._load_cards()
        self.state = "ready"
        self.ready_at = time.monotonic()
        self._ready.set()
        log.info(
            "runner %s ready at %s (pid %d, %.1f s, CPU path %s, extra buffer types %s)",
            self.name,
            self.url,
            process.pid,
            self.ready_at - started,
            self.cpu.get("path", "?"),
            "on" if self.cpu.get("extra_buffer_types") else "off",
        )

    def _start_failed(self, why: str) -> RunnerStartFailed:
        tail = "\n    ".join(list(self.stderr_tail)[-8:])
        message = f"Runner '{self.name}' did not start: {why}."
        return RunnerStartFailed(message + (f"\n    {tail}" if tail else ""))

    async def _read_ready(self, stdout: asyncio.StreamReader) -> dict[str, Any] | None:
        while True:
            line = await stdout.readline()
            if not line:
                return None  # the child exited (or closed stdout) before it was ready
            if line.startswith(b'{"runner"'):
                message: dict[str, Any] = orjson.loads(line)
                if message.get("runner") == "ready":
                    return message

    async def _relay_stderr(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            sys.stderr.write(f"[runner {self.name}] {text}\n")

    async def _load_cards(self) -> None:
        import aiohttp

        assert self.url is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(f"{self.url}/runner/v1/info", headers=headers) as response,
        ):
            response.raise_for_status()
            info = orjson.loads(await response.read())
        self.cards = {
            item["name"]: [card_from_wire(card) for card in item["models"]]
            for item in info["providers"]
        }

    def _record_exit(self, code: int) -> None:
        reason = exit_reason(code)
        crash = next((line for line in reversed(self.stderr_tail) if "Fatal Python" in line), "")
        self.last_exit = f"{reason}{f' ({crash})' if crash else ''}"
        self.last_exit_at = time.time()
        self._exited.set()

    async def _supervise(self) -> None:
        """Wait for the child to exit; restart it with backoff, until closed."""
        attempt = 0
        while not self._closing:
            process = self._process
            assert process is not None
            if process.returncode is None:
                code = await process.wait()
                if self._closing:
                    return
                self._record_exit(code)
                self.restarts += 1
                log.error(
                    "runner %s (pid %s) %s; in-flight requests failed; restarting",
                    self.name,
                    process.pid,
                    self.last_exit,
                )
            self.state = "restarting"
            self.url = None
            self._ready.clear()
            if self.ready_at is not None and time.monotonic() - self.ready_at > STABLE_AFTER_S:
                attempt = 0
            self.ready_at = None
            delay = min(self.config.restart_backoff_max_s, FIRST_BACKOFF_S * 2**attempt)
            attempt += 1
            await asyncio.sleep(delay)
            try:
                await self._launch()
            except RunnerStartFailed as exc:
                self.restarts += 1
                log.error("%s", exc.message)
