"""The built-in Whisper model on espeak-ng speech: in-process and through a runner."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave.providers.base import TranscriptionOptions
from enclave.providers.whisper import WhisperProvider
from enclave.settings import ModelConfig

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install -y espeak-ng)",
)
SENTENCE = "Please send the quarterly report to the finance department before Friday."
MODEL = "whisper-tiny-en"


def word_error_rate(reference: str, hypothesis: str) -> float:
    import bench.audio

    return bench.audio.word_error_rate(reference, hypothesis)


def test_transcribes_synthetic_speech(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True)
    provider = WhisperProvider(
        "speech", [ModelConfig(name=MODEL, path="builtin:whisper-tiny-en")], 4, threads=2
    )
    options = TranscriptionOptions(word_timestamps=True)
    transcript = asyncio.run(provider.transcribe(MODEL, wav.read_bytes(), options))
    assert word_error_rate(SENTENCE, transcript.text) < 0.5, transcript.text
    assert transcript.language == "en" and 3 < transcript.duration < 10
    assert transcript.segments and transcript.segments[0].words
    assert transcript.segments[-1].end <= transcript.duration + 0.5
