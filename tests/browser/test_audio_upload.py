"""The knowledge page adds an audio file's transcript to a base in one step.

Its own server: an embedder for the base and the built-in Whisper model, both in
runner processes. The page finds the transcribing model in ``/v1/models``, posts
espeak-ng speech to ``/v1/audio/transcriptions`` with the session cookie and
CSRF token, and uploads the transcript as ``<name>.txt``, which is indexed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import DESKTOP, Problems, browser_missing, sign_in

_missing = browser_missing()
if _missing and not os.environ.get("CI"):
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from playwright.sync_api import Browser, expect  # noqa: E402

from tests.e2e.conftest import ADMIN_KEY, Server, start_server, stop_server  # noqa: E402

pytestmark = [
    pytest.mark.model,
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None,
        reason="espeak-ng is not installed (apt-get install -y espeak-ng)",
    ),
]
CONFIG = """
default_model: all-minilm-l6-v2
providers:
  - name: local-embed
    type: sentence-transformers
    models:
      - {name: all-minilm-l6-v2, path: "builtin:all-minilm-l6-v2", n_ctx: 256}
  - name: speech
    type: whisper
    models:
      - {name: whisper-tiny-en, path: "builtin:whisper-tiny-en"}
"""
SENTENCE = "Please send the quarterly report to the finance department before Friday."


@pytest.fixture(scope="module")
def audio_ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("enclave-browser-audio")
    server = start_server(home, CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    yield server
    stop_server(server.process)


def test_an_audio_transcript_is_added_to_the_base(
    browser: Browser, audio_ui_server: Server, tmp_path: Path
) -> None:
    wav = tmp_path / "memo.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True, timeout=30)
    context = browser.new_context(base_url=audio_ui_server.url, viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        problems = Problems()
        problems.watch(page)
        sign_in(page, ADMIN_KEY, "/knowledge")
        page.get_by_label("New knowledge base name", exact=True).fill("ui-memos")
        page.get_by_role("button", name="Create").click()
        zone = page.get_by_role("region", name="Upload documents")
        zone.get_by_label("Add audio transcript", exact=True).set_input_files(str(wav))
        uploads = page.get_by_role("list", name="Uploads")
        audio = uploads.get_by_role("listitem").filter(has_text="memo.wav")
        expect(audio).to_contain_text("transcribed", timeout=60_000)
        transcript = uploads.get_by_role("listitem").filter(has_text="memo.txt")
        expect(transcript).to_contain_text("indexed", timeout=60_000)
        documents = page.get_by_role("table", name="Documents")
        expect(documents).to_contain_text("memo.txt", timeout=15_000)
        documents.get_by_role("row").filter(has_text="memo.txt").get_by_role(
            "button", name="Chunks"
        ).click()
        expect(page.get_by_text("finance", exact=False).first).to_be_visible()
        problems.assert_none()
    finally:
        context.close()
