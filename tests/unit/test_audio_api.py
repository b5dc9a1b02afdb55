"""/v1/audio/transcriptions and /translations against a fake transcriber: formats, errors,
classification of the transcript, and the ``enclave transcribe`` command."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from enclave.app import create_app
from enclave.cli.main import app as cli
from enclave.errors import InvalidRequest
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
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SECRET = "My personnummer is 19121212-1212."
WAV = b"RIFF fake audio"


class FakeTranscriber(Provider):
    """Hears ``text`` in anything that starts with RIFF; anything else is not audio."""

    def __init__(self, text: str = "Hello there. General Kenobi.") -> None:
        self.name = "speech"
        self.text = text
        self.calls: list[TranscriptionOptions] = []

    def models(self) -> list[ModelCard]:
        caps = Capabilities(transcription=True)
        return [ModelCard(id="whisper-test", provider=self.name, capabilities=caps)]

    async def health(self) -> Health:
        return Health(ok=True)

    async def transcribe(
        self, model: str, audio: bytes, options: TranscriptionOptions
    ) -> Transcript:
        if not audio.startswith(b"RIFF"):
            raise InvalidRequest("The file could not be decoded as audio.", param="file")
        self.calls.append(options)
        first, _, second = self.text.partition(". ")
        segments = (
            TranscriptSegment(0, 0.0, 1.5, first + ".", (TranscriptWord("Hello", 0.0, 0.4),)),
            TranscriptSegment(1, 1.5, 3725.25, second),
        )
        return Transcript(self.text, "en", 3725.25, segments)


@pytest.fixture
def speech(settings: Settings) -> Iterator[tuple[TestClient, FakeTranscriber]]:
    settings.audio.max_file_bytes = 2048
    transcriber = FakeTranscriber()
    registry = ModelRegistry([ScriptedProvider(), transcriber], default_model="scripted")
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as c:
        yield c, transcriber


def post(client: TestClient, path: str = "/v1/audio/transcriptions", audio: bytes = WAV, **fields):
    data = {"model": "whisper-test", **fields}
    return client.post(path, files={"file": ("talk.wav", audio)}, data=data, headers=AUTH)


def test_json_is_the_default(speech: tuple[TestClient, FakeTranscriber]) -> None:
    client, transcriber = speech
    response = post(client, language="sv", prompt="Kenobi", temperature="0.2")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "text": "Hello there. General Kenobi.",
        "usage": {"type": "duration", "seconds": 3726},
    }
    assert response.headers["x-enclave-classification"]
    options = transcriber.calls[-1]
    assert (options.task, options.language, options.prompt) == ("transcribe", "sv", "Kenobi")
    assert options.temperature == 0.2 and not options.word_timestamps


def test_text_srt_and_vtt(speech: tuple[TestClient, FakeTranscriber]) -> None:
    client, _ = speech
    text = post(client, response_format="text")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "Hello there. General Kenobi.\n"
    srt = post(client, response_format="srt").text
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n")
    assert "00:00:01,500 --> 01:02:05,250\nGeneral Kenobi." in srt
    vtt = post(client, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")


def test_verbose_json_with_segments_and_words(speech: tuple[TestClient, FakeTranscriber]) -> None:
    client, transcriber = speech
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("talk.wav", WAV)},
        data={
            "model": "whisper-test",
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["segment", "word"],
        },
        headers=AUTH,
    )
    body = response.json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert body["duration"] == 3725.25
    assert [s["text"] for s in body["segments"]] == ["Hello there.", "General Kenobi."]
    assert body["words"] == [{"word": "Hello", "start": 0.0, "end": 0.4}]
    assert transcriber.calls[-1].word_timestamps


def test_translation_asks_for_english(speech: tuple[TestClient, FakeTranscriber]) -> None:
    client, transcriber = speech
    response = post(client, "/v1/audio/translations", response_format="verbose_json")
    assert response.status_code == 200 and response.json()["task"] == "translate"
    assert transcriber.calls[-1].task == "translate"


def test_errors(speech: tuple[TestClient, FakeTranscriber]) -> None:
    client, _ = speech
    unknown = post(client, model="nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    broken = post(client, audio=b"this is not audio")
    assert broken.status_code == 400 and "decoded as audio" in broken.json()["error"]["message"]
    too_large = post(client, audio=b"RIFF" + b"0" * 4096)
    assert too_large.status_code == 413
    assert "audio.max_file_bytes" in too_large.json()["error"]["message"]
    chat_model = post(client, model="scripted")
    assert chat_model.status_code == 400
    no_file = client.post("/v1/audio/transcriptions", data={"model": "whisper-test"}, headers=AUTH)
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    bad_format = post(client, response_format="docx")
    assert bad_format.status_code == 400
    anonymous = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", WAV)})
    assert anonymous.status_code == 401


def test_transcript_with_a_secret_is_classified_and_audited(
    speech: tuple[TestClient, FakeTranscriber],
) -> None:
    client, transcriber = speech
    transcriber.text = SECRET
    response = post(client)
    assert response.status_code == 200
    assert response.headers["x-enclave-classification"] == "confidential"
    assert response.headers["x-enclave-model"] == "whisper-test"
    client.app.state.services.gateway.audit.flush()  # type: ignore[attr-defined]
    entries = client.get("/api/admin/audit", headers=AUTH).json()["data"]
    entry = next(e for e in entries if e["endpoint"] == "/v1/audio/transcriptions")
    assert entry["classification"] == "confidential"
    assert entry["outcome"] == "ok" and entry["provider"] == "speech"
    assert "19121212" not in json.dumps(entry)
    usage = client.get("/api/usage", headers=AUTH).json()["data"]
    line = next(u for u in usage if u["model"] == "whisper-test")
    assert line["audio_seconds"] == 3725.25 and line["completion_tokens"] > 0


def test_cli_prints_and_adds_to_knowledge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/audio/transcriptions":
            return httpx.Response(
                200, text="Hello there.\n", headers={"x-enclave-classification": "internal"}
            )
        return httpx.Response(201, json={"documents": []})

    real_client = httpx.Client

    def fake_client(**kwargs: object) -> httpx.Client:
        return real_client(transport=httpx.MockTransport(handler), **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "Client", fake_client)
    audio = tmp_path / "standup.wav"
    audio.write_bytes(WAV)
    result = CliRunner().invoke(
        cli,
        ["transcribe", str(audio), "--to-knowledge", "minutes", "--url", "http://x", "--key", "k"],
    )
    assert result.exit_code == 0, result.output
    assert "Hello there." in result.output
    upload = seen[-1]
    assert upload.url.path == "/api/knowledge/minutes/documents"
    assert b'filename="standup.txt"' in upload.content and b"internal" in upload.content


def test_transcripts_and_options_cross_the_runner_protocol() -> None:
    from enclave.runners import protocol

    transcript = Transcript(
        "Hi.",
        "en",
        1.5,
        (
            TranscriptSegment(
                0,
                0.0,
                1.5,
                "Hi.",
                (TranscriptWord("Hi.", 0.0, 1.0),),
            ),
        ),
    )
    wire = json.loads(json.dumps(protocol.transcript_to_wire(transcript)))
    assert protocol.transcript_from_wire(wire) == transcript
    options = TranscriptionOptions(task="translate", prompt="p", word_timestamps=True)
    assert protocol.options_from_wire(protocol.options_to_wire(options)) == options


def test_the_knowledge_page_can_transcribe_with_the_session_cookie(
    speech: tuple[TestClient, FakeTranscriber],
) -> None:
    """The UI finds a transcribing model in /v1/models and posts with cookie and CSRF token."""
    client, _ = speech
    models = client.get("/v1/models", headers=AUTH).json()["data"]
    assert next(m for m in models if m["id"] == "whisper-test")["capabilities"] == ["transcription"]
    response = client.post("/ui/login", data={"api_key": ADMIN_KEY}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/knowledge").text
    assert 'id="choose-audio"' in page
    found = re.search(r'<meta name="csrf-token" content="([^"]*)"', page)
    assert found is not None
    files = {"file": ("talk.wav", WAV)}
    data = {"model": "whisper-test"}
    refused = client.post("/v1/audio/transcriptions", files=files, data=data)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    answer = client.post(
        "/v1/audio/transcriptions",
        files=files,
        data=data,
        headers={"X-CSRF-Token": found.group(1)},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == "Hello there. General Kenobi."
