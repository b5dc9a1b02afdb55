"""OpenAI's audio wire shapes: the transcription form fields and the five answer formats.

``json`` is ``{"text"}``; ``text`` is the plain transcript; ``srt`` and ``vtt`` are
subtitle files, one cue per segment; ``verbose_json`` adds ``task``,
``language``, ``duration``, ``segments`` and, when asked with
``timestamp_granularities[]=word``, ``words``. ``json`` and ``verbose_json``
carry OpenAI's duration usage, ``{"type": "duration", "seconds"}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from enclave.providers.base import Transcript, TranscriptionOptions

AudioFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class TranscriptionRequest(BaseModel):
    """The form fields of ``/v1/audio/transcriptions`` (and ``translations``), less the file."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    language: str | None = Field(None, max_length=16)
    prompt: str | None = Field(None, max_length=10_000)
    response_format: AudioFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = ["segment"]

    def to_options(self, task: Literal["transcribe", "translate"]) -> TranscriptionOptions:
        return TranscriptionOptions(
            task=task,
            language=None if task == "translate" else self.language,
            prompt=self.prompt,
            temperature=self.temperature,
            word_timestamps="word" in self.timestamp_granularities,
        )


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    cues = [
        f"{number}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
        for number, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(transcript: Transcript) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in transcript.segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def verbose_body(transcript: Transcript, task: str, granularities: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.language,
        "duration": transcript.duration,
        "text": transcript.text,
    }
    if "segment" in granularities or "word" not in granularities:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for s in transcript.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word, "start": w.start, "end": w.end}
            for s in transcript.segments
            for w in s.words
        ]
    body["usage"] = _usage(transcript)
    return body


def render(
    transcript: Transcript, response_format: str, task: str, granularities: list[str]
) -> tuple[bytes, str]:
    """The answer body and its media type."""
    media_type = MEDIA_TYPES[response_format]
    if response_format == "json":
        body = orjson.dumps({"text": transcript.text, "usage": _usage(transcript)})
    elif response_format == "verbose_json":
        body = orjson.dumps(verbose_body(transcript, task, granularities))
    elif response_format == "srt":
        body = to_srt(transcript).encode()
    elif response_format == "vtt":
        body = to_vtt(transcript).encode()
    else:
        body = (transcript.text + "\n").encode()
    return body, media_type
