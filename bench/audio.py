"""Speech to text: word error rate and real-time factor of the built-in Whisper model.

Speech is generated with espeak-ng from known sentences, transcribed on 2 cores
(``cpu_threads=2``) by the same provider the server runs, and scored against the
text it was made from. Prints each clip and the medians. Needs espeak-ng
(``apt-get install espeak-ng``).

    .venv/bin/python bench/audio.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from enclave.providers.base import TranscriptionOptions
from enclave.providers.whisper import WhisperProvider
from enclave.settings import ModelConfig

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the quarterly report to the finance department before Friday.",
    "The meeting has been moved to Tuesday afternoon at three o'clock.",
    "Our new policy requires every employee to complete the security training.",
    "The weather today is sunny with a light breeze from the west.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / max(1, len(ref))


def speak(text: str, path: Path) -> bytes:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return path.read_bytes()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install -y espeak-ng); nothing to measure")
    model = "whisper-tiny-en"
    provider = WhisperProvider(
        "bench", [ModelConfig(name=model, path="builtin:whisper-tiny-en")], 8, threads=2
    )
    started = time.perf_counter()
    provider._model(model)
    print(f"load: {time.perf_counter() - started:.2f}s")
    wers, rtfs = [], []
    with tempfile.TemporaryDirectory() as folder:
        for n, sentence in enumerate(SENTENCES):
            audio = speak(sentence, Path(folder) / f"{n}.wav")
            for _ in range(args.repeats):
                started = time.perf_counter()
                transcript = await provider.transcribe(model, audio, TranscriptionOptions())
                rtfs.append((time.perf_counter() - started) / transcript.duration)
            wers.append(word_error_rate(sentence, transcript.text))
            print(f"wer {wers[-1]:.2f}  {transcript.duration:5.1f}s  {transcript.text!r}")
    await provider.close()
    print(f"median WER {statistics.median(wers):.3f}, mean WER {statistics.mean(wers):.3f}")
    print(f"median real-time factor on 2 cores: {statistics.median(rtfs):.3f}")


if __name__ == "__main__":
    asyncio.run(main())
