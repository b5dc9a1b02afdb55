"""Gateway overhead: direct calls to a mock upstream vs the same calls through Enclave.

One run starts the mock upstream (``enclave.testing.mock_upstream``) and an
``enclave serve`` process that routes model ``mock`` to it, then drives both
with the interleaved direct/gateway harness in ``../shared/bench/gwbench``
(``compare.py``): concurrency 1, 8 and 32, streaming (20 chunks) and not.
It prints added p50/p99 latency, requests/s and the gateway's CPU ms per
request. With ``--litellm`` it also starts LiteLLM's proxy in front of the
same mock (``litellm_up.sh``) and runs the same harness against it, so the
ratios below come from one run on one machine:

    .venv/bin/python bench/gateway.py              # Enclave only (~70 s)
    .venv/bin/python bench/gateway.py --litellm    # plus LiteLLM (~3 min)

With ``--baseline-src DIR`` it first runs the same harness against an
``enclave serve`` started with ``PYTHONPATH=DIR`` (another checkout's
``src``), so a change's cost shows up as "before" and "after" columns from
one run. Durable audit (issue 12) was measured that way:

    git worktree add /tmp/base <commit before it>
    .venv/bin/python bench/gateway.py --concurrency 1,32 --baseline-src /tmp/base/src

Targets (issue "Gateway"): added p50 <= 2 ms at concurrency 1, and >= 10x
LiteLLM's requests/s at concurrency 32, streaming and non-streaming.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GWBENCH = ROOT.parent / "shared" / "bench" / "gwbench"
PYTHON = sys.executable
ENCLAVE = str(Path(PYTHON).parent / "enclave")
KEY = "ek-bench-admin-key-0123456789abcdef"

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--litellm", action="store_true", help="also benchmark LiteLLM's proxy")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--round-seconds", type=float, default=1.5)
parser.add_argument("--concurrency", default="1,8,32")
parser.add_argument("--mock-port", type=int, default=8100)
parser.add_argument("--port", type=int, default=0, help="Enclave's port (0: a free one)")
parser.add_argument("--json", help="write all results to this file")
parser.add_argument(
    "--baseline-src", help="also run an enclave from this src directory first (the 'before')"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, key: str | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        request = urllib.request.Request(url)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up within {seconds:.0f} s")


def compare(gateway: str, key: str, pid: int, args: argparse.Namespace, out: Path) -> dict:
    command = [
        PYTHON,
        str(GWBENCH / "compare.py"),
        "--direct",
        f"http://127.0.0.1:{args.mock_port}/v1",
        "--gateway",
        gateway,
        "--gateway-key",
        key,
        "--gateway-pid",
        str(pid),
        "--concurrency",
        args.concurrency,
        "--rounds",
        str(args.rounds),
        "--round-seconds",
        str(args.round_seconds),
        "--json",
        str(out),
    ]
    subprocess.run(command, check=False)
    return dict(json.loads(out.read_text()))


def cell(results: dict, mode: str, concurrency: int) -> dict[str, Any]:
    for row in results["results"]:
        if row["mode"] == mode and row["concurrency"] == concurrency:
            return dict(row)
    raise KeyError((mode, concurrency))


def start_enclave(
    work: Path, name: str, config: Path, src: str | None, port: int = 0
) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(ENCLAVE_HOME=str(work / f"home-{name}"), ENCLAVE_ADMIN_KEY=KEY)
    if src:  # ahead of the installed (editable) package
        env["PYTHONPATH"] = src
    log = (work / f"enclave-{name}.log").open("wb")
    server = subprocess.Popen(
        [ENCLAVE, "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(f"http://127.0.0.1:{port}/v1/models", KEY)
    print(f"# Enclave ({name}) on :{port} (pid {server.pid})")
    return server, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> int:
    args = parser.parse_args()
    if not (GWBENCH / "compare.py").exists():
        raise SystemExit(f"the gwbench harness is missing: {GWBENCH}")
    work = Path(tempfile.mkdtemp(prefix="enclave-gwbench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        mock = subprocess.Popen(
            [PYTHON, "-m", "enclave.testing.mock_upstream", "--port", str(args.mock_port)],
            stdout=subprocess.DEVNULL,
        )
        processes.append(mock)
        wait_for(f"http://127.0.0.1:{args.mock_port}/health")
        config = work / "enclave.yaml"
        config.write_text(
            "log_level: warning\n"
            "default_model: mock\n"
            "providers:\n"
            "  - name: upstream\n"
            "    type: openai\n"
            f"    base_url: http://127.0.0.1:{args.mock_port}/v1\n"
            "    clearance: secret\n"
            "    models: [mock]\n"
        )
        before = None
        if args.baseline_src:
            base, port = start_enclave(work, "before", config, args.baseline_src)
            try:
                url = f"http://127.0.0.1:{port}/v1"
                before = compare(url, KEY, base.pid, args, work / "b.json")
            finally:
                stop(base)
        server, port = start_enclave(work, "after", config, None, args.port)
        processes.append(server)
        print(f"# mock upstream on :{args.mock_port}")
        enclave = compare(f"http://127.0.0.1:{port}/v1", KEY, server.pid, args, work / "e.json")
        litellm = None
        if args.litellm:
            subprocess.run(["bash", str(GWBENCH / "litellm_up.sh")], check=True)
            pid = int(Path("/tmp/gwbench/litellm.pid").read_text())
            print("# LiteLLM on :4000")
            litellm = compare("http://127.0.0.1:4000/v1", "sk-bench", pid, args, work / "l.json")
        print()
        if before is not None:
            print("mode       C | added p50 ms before | after | RPS before | after")
            for mode in ("nonstream", "stream"):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    old, new = cell(before, mode, concurrency), cell(enclave, mode, concurrency)
                    print(
                        f"{mode:9} {concurrency:>3} | {old['added_p50_ms']:19.2f} | "
                        f"{new['added_p50_ms']:5.2f} | {old['gateway']['rps']:10.0f} | "
                        f"{new['gateway']['rps']:5.0f}"
                    )
            print()
        print("mode       C | Enclave added p50 ms | Enclave RPS | LiteLLM RPS | RPS ratio")
        for mode in ("nonstream", "stream"):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                ours = cell(enclave, mode, concurrency)
                rps = ours["gateway"]["rps"]
                theirs = cell(litellm, mode, concurrency)["gateway"]["rps"] if litellm else None
                ratio = f"{rps / theirs:9.1f}x" if theirs else "        -"
                print(
                    f"{mode:9} {concurrency:>3} | {ours['added_p50_ms']:20.2f} | {rps:11.0f} | "
                    f"{theirs or 0:11.0f} | {ratio}"
                )
        if args.json:
            Path(args.json).write_text(
                json.dumps({"enclave": enclave, "before": before, "litellm": litellm})
            )
        return 0
    finally:
        if args.litellm:
            subprocess.run(["bash", str(GWBENCH / "litellm_up.sh"), "stop"], check=False)
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
