"""The README, followed literally by a newcomer: its ``bash`` blocks run in order.

Each block runs in ``bash -e -o pipefail`` from the repository root, in a fresh
``ENCLAVE_HOME``, with no ``ENCLAVE_*`` variable and without ``.venv/bin`` on
``PATH`` (the README must say how to get ``enclave`` on it). What a block
exports carries over to the next, as in one terminal. Only three things are
done differently, each as the README or the Makefile says:

- a block that is ``make run`` or ``make demo`` starts the server as the
  Makefile does (``demo``: the mock HR API on 127.0.0.1:8090 and
  ``enclave serve --config examples/hr-assistant/enclave.yaml``, both with
  ``HR_TOKEN``), on a free port instead of 8080, reusing the same home;
- ``ek-...`` ("the key printed on first start") is the key that start printed;
- ``127.0.0.1:8080`` is that free port.

A command that fails, a block that does not finish in time, or a server that
says "Enclave listening" before it answers fails the test: the README and the
product have drifted apart.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import without_enclave_variables
from tests.e2e.conftest import ENCLAVE, free_port

pytestmark = pytest.mark.model

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
KEY = re.compile(r"^\s+(ek-[A-Za-z0-9_-]{20,})\s*$", re.M)
BLOCK_S = 600  # the longest a block may take (apply --test waits for model answers)
START_S = 240  # the longest a server may take to say it is listening
HR_PORT = 8090  # examples/hr-assistant/app.yaml calls the mock HR API here
HR_TOKEN = "readme-hr-token-0123456789"


def readme_blocks() -> list[str]:
    return [block.strip() for block in BLOCK.findall(README.read_text())]


def test_the_readme_has_the_blocks_this_test_follows() -> None:
    blocks = readme_blocks()
    assert blocks[0].startswith("make run")
    assert any(block.startswith("make demo") for block in blocks)
    assert any("source .venv/bin/activate" in block for block in blocks)
    # The Makefile starts the demo the way run_demo below does.
    makefile = MAKEFILE.read_text()
    assert "examples/hr-assistant/mock_hr_api.py --port 8090" in makefile
    assert "enclave serve --port $(DEMO_PORT) --config examples/hr-assistant/enclave.yaml" in (
        makefile
    )


class Session:
    """One terminal's worth of state: the environment, the server, what it printed."""

    def __init__(self, home: Path, work: Path) -> None:
        venv_bin = str(Path(sys.executable).parent)
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin]
        self.env = without_enclave_variables(dict(os.environ))
        self.env.pop("VIRTUAL_ENV", None)
        self.env.update({"PATH": os.pathsep.join(path), "ENCLAVE_HOME": str(home)})
        self.home = home
        self.work = work
        self.port = free_port()
        self.key: str | None = None
        self.processes: list[subprocess.Popen[str]] = []
        self.output = work / "server.out"

    def start(self, target: str) -> None:
        self.stop()
        server_env = {**self.env, "ENCLAVE_LOG_LEVEL": "info"}
        args = [ENCLAVE, "serve", "--port", str(self.port)]
        if target == "demo":
            server_env["HR_TOKEN"] = HR_TOKEN
            mock = subprocess.Popen(
                [sys.executable, "examples/hr-assistant/mock_hr_api.py", "--port", str(HR_PORT)],
                cwd=ROOT,
                env=server_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.processes.append(mock)
            args += ["--config", "examples/hr-assistant/enclave.yaml"]
        out = self.output.open("w")
        server = subprocess.Popen(
            args, cwd=ROOT, env=server_env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        self.processes.append(server)
        deadline = time.monotonic() + START_S
        while "Enclave listening on" not in self.output.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`make {target}` did not start:\n{self.output.read_text()}")
            time.sleep(0.2)
        printed = self.output.read_text()
        # "listening" is printed only once the server answers.
        ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert "loading models" in printed.split("Enclave listening on")[0]
        found = KEY.search(printed)
        if found:
            self.key = found.group(1)
        assert self.key, f"the first start printed no admin key:\n{printed}"

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        assert self.key, "the README uses the server before it starts it"
        script = block.replace("ek-...", self.key).replace(
            "127.0.0.1:8080", f"127.0.0.1:{self.port}"
        )
        dump = self.work / "env"
        ran = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", f'{script}\nenv -0 > "{dump}"'],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_S,
        )
        if ran.returncode == 0:
            pairs = (item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
            self.env = dict(pairs)
        return ran

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    running = Session(tmp_path / "home", tmp_path)
    yield running
    running.stop()


def test_every_shell_block_of_the_readme_runs_as_written(session: Session) -> None:
    for number, block in enumerate(readme_blocks(), start=1):
        first = block.splitlines()[0].split("#")[0].strip()
        if first in ("make run", "make demo"):
            session.start(first.removeprefix("make "))
            continue
        ran = session.run(block)
        assert ran.returncode == 0, (
            f"README block {number} failed:\n{block}\n--- stdout\n{ran.stdout}\n"
            f"--- stderr\n{ran.stderr}\n--- server\n{session.output.read_text()[-4000:]}"
        )
    log = session.output.read_text()
    # The server's log stays readable: no progress bars from the embedding model.
    assert "Batches" not in log
