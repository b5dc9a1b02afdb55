"""What the CLI tells a newcomer: "listening" only once true, ingestion progress, plurals."""

from __future__ import annotations

import threading
import time

import pytest

from enclave.cli.common import plural
from enclave.cli.knowledge import progress_text
from enclave.cli.serve import announce_when_ready


class FakeServer:
    started = False
    should_exit = False


def test_listening_is_printed_only_once_the_server_has_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = FakeServer()
    thread = threading.Thread(
        target=announce_when_ready, args=(server, "http://127.0.0.1:1"), kwargs={"every_s": 0.1}
    )
    thread.start()
    time.sleep(0.35)
    assert "listening" not in capsys.readouterr().out  # models still loading
    server.started = True
    thread.join(5)
    out = capsys.readouterr().out
    assert "Enclave listening on http://127.0.0.1:1" in out


def test_loading_progress_is_shown_meanwhile_and_nothing_if_it_never_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = FakeServer()
    thread = threading.Thread(
        target=announce_when_ready, args=(server, "http://x"), kwargs={"every_s": 0.05}
    )
    thread.start()
    time.sleep(0.3)
    server.should_exit = True
    thread.join(5)
    out = capsys.readouterr().out
    assert "still loading" in out and "listening" not in out


def test_progress_has_a_rate_and_an_eta_and_plurals_are_right() -> None:
    running = {"progress": 120, "progress_total": 400, "chunks_per_s": 35.04, "eta_s": 8.0}
    assert progress_text(running) == "120/400 chunks, 35.0 chunks/s, about 8 s left"
    assert progress_text({**running, "eta_s": 130.0}).endswith("about 2 min 10 s left")
    assert progress_text({"progress": 1}) == "1 chunk"
    assert progress_text({"progress": 0, "progress_total": 1}) == "0/1 chunk"
    assert [plural(n, "document") for n in (0, 1, 2)] == [
        "0 documents",
        "1 document",
        "2 documents",
    ]
