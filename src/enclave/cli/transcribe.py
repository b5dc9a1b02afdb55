"""``enclave transcribe``: speech to text through the server, optionally into a knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer

from enclave.cli.client import KeyOption, UrlOption, connect, error_message, fail
from enclave.cli.common import ConfigOption

FORMATS = ("text", "json", "verbose_json", "srt", "vtt")
DEFAULT_MODEL = "whisper-tiny-en"


def transcript_text(body: httpx.Response, response_format: str) -> str:
    """What to print and store: the transcript, or the subtitle file as sent."""
    if response_format in ("json", "verbose_json"):
        return str(body.json()["text"])
    return body.text


def transcribe(
    file: Annotated[Path, typer.Argument(help="Audio file (wav, mp3, m4a, ogg, flac, webm).")],
    model: Annotated[str, typer.Option(help="Speech model id.")] = DEFAULT_MODEL,
    response_format: Annotated[
        str, typer.Option("--format", help="text, json, verbose_json, srt or vtt.")
    ] = "text",
    language: Annotated[str | None, typer.Option(help="Spoken language (ISO 639-1).")] = None,
    translate: Annotated[bool, typer.Option(help="Translate the speech into English.")] = False,
    to_knowledge: Annotated[
        str | None,
        typer.Option(help="Also add the transcript to this knowledge base (FILE's name, .txt)."),
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Transcribe an audio file on the server's own speech model and print the transcript.

    Example: enclave transcribe meeting.wav --format srt --to-knowledge minutes
    """
    if response_format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}", code=2)
    if not file.is_file():
        fail(f"no such file: {file}", code=2)
    path = "/v1/audio/translations" if translate else "/v1/audio/transcriptions"
    fields = {"model": model, "response_format": response_format}
    if language:
        fields["language"] = language
    with connect(config, url, key, timeout=3600.0) as client:
        try:
            with file.open("rb") as handle:
                answer = client.http.post(path, files={"file": (file.name, handle)}, data=fields)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {client.url}: {exc}")
        if answer.status_code >= 400:
            fail(f"POST {path} answered {answer.status_code}: {error_message(answer)}")
        text = transcript_text(answer, response_format)
        typer.echo(text if response_format != "verbose_json" else answer.text)
        classification = answer.headers.get("x-enclave-classification", "")
        if to_knowledge:
            name = f"{file.stem}.txt"
            fields = {"classification": classification} if classification else {}
            client.call(
                "POST",
                f"/api/knowledge/{to_knowledge}/documents",
                files={"file": (name, text.encode(), "text/plain")},
                data=fields,
            )
            typer.secho(
                f"added {name} to knowledge base '{to_knowledge}' ({classification or 'default'})",
                err=True,
            )
