"""Real client libraries against one real `enclave serve` with the embedded models.

The server comes from the e2e fixtures (a subprocess on a free loopback port). The
model is tiny, so these tests check properties: it parses, the tool was called, a
stream arrived.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import ADMIN_KEY, Server, start_server, stop_server

MODEL = "smollm2-135m"
EMBEDDER = "all-minilm-l6-v2"

# Two slots: agent frameworks sometimes overlap a request with the next.
CLIENTS_CONFIG = """
runner:
  slots: 2
"""


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("enclave-clients")
    running = start_server(home, CLIENTS_CONFIG, ENCLAVE_ADMIN_KEY=ADMIN_KEY)
    yield running
    stop_server(running.process)


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return f"{server.url}/v1"


def has_responses_api(server: Server) -> bool:
    """Whether ``/v1/responses`` is served (it answers something other than 404/405)."""
    with server.http() as http:
        status = http.post("/v1/responses", json={"model": MODEL, "input": "Hi"}).status_code
    return status not in (404, 405)


def skip_without_responses(server: Server) -> None:
    if not has_responses_api(server):
        pytest.skip("enclave does not serve /v1/responses yet (the Responses API endpoint)")
