"""Audio transcription through a real ``enclave serve``, the engine in a runner process.

``runner.mode: process`` is the default: the Whisper model runs in a supervised
runner process and the control plane reaches it over the runner protocol. The
official ``openai`` client posts espeak-ng speech to ``/v1/audio/transcriptions``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ADMIN_KEY, Server, start_server, stop_server

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install -y espeak-ng)",
)
CONFIG = """
default_model: whisper-tiny-en
runner:
  mode: process
providers:
  - name: speech
    type: whisper
    models:
      - {name: whisper-tiny-en, path: "builtin:whisper-tiny-en"}
"""
SENTENCE = "Please send the quarterly report to the finance department before Friday."


@pytest.fixture
def audio_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "home", CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    yield server
    stop_server(server.process)


def test_transcribes_speech_through_the_runner_process(
    audio_server: Server, tmp_path: Path
) -> None:
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True, timeout=30)
    client = audio_server.client()
    with wav.open("rb") as audio:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-tiny-en", file=audio, response_format="verbose_json"
        )
    transcript = raw.parse()
    words = transcript.text.lower()
    assert "report" in words and "finance" in words, transcript.text
    assert 3 < float(transcript.duration) < 10
    assert raw.headers["x-enclave-classification"] == "public"
    with audio_server.http() as http:
        providers = http.get("/api/providers").json()
        state = next(p for p in providers if p["name"] == "speech")["state"]
        assert state["runner"]["state"] == "ready", state
        usage = http.get("/api/usage").json()["data"]
    line = next(u for u in usage if u["model"] == "whisper-tiny-en")
    assert line["requests"] == 1 and 3 < line["audio_seconds"] < 10
