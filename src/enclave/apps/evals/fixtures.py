"""A local HTTP server that stands in for an app's APIs during ``enclave test``.

Each API gets its own path prefix: the draft's ``url`` for API ``hr`` becomes
``http://127.0.0.1:PORT/hr``, so the server learns the API from the first path
segment and the operation from the rest. A test's ``fixtures`` map
``'METHOD /path'`` keys to canned responses. A request matches a key with the
same method and path exactly (the query string is ignored), else a templated
key such as ``GET /vacancies/{id}`` (one ``{name}`` stands for one path
segment), in the order the test lists them. Anything else gets a 404 with
``{"error": "no fixture for GET /x"}``, which the app sees as the API's answer.

Every request is recorded in :attr:`FixtureServer.requests`, matched or not,
so a failing test can say which calls had no fixture.

The server is the stdlib ``ThreadingHTTPServer`` in a daemon thread: no
dependency, and it speaks plain HTTP/1.0 (one request per connection), which
every client handles.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from enclave.apps.spec import FixtureResponse

__all__ = ["FixtureServer", "RecordedRequest", "match_fixture", "path_matches"]

Fixtures = dict[str, dict[str, FixtureResponse]]

_MAX_BODY = 10 * 1024 * 1024
_PLACEHOLDER = re.compile(r"\{[^{}/]+\}")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fixture server received.

    ``path`` is the operation path without the API prefix (``/vacancies/12``).
    ``body`` is the parsed JSON body, else the body as text, else None.
    ``matched`` says whether a fixture answered it.
    """

    api: str
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    matched: bool

    @property
    def operation(self) -> str:
        return f"{self.method} {self.path}"


def _template(path: str) -> re.Pattern[str] | None:
    """A regex for a templated fixture path, or None when it has no placeholder."""
    if not _PLACEHOLDER.search(path):
        return None
    parts = _PLACEHOLDER.split(path)
    return re.compile("[^/]+".join(re.escape(part) for part in parts) + r"\Z")


def _normal(path: str) -> str:
    """The path without query, fragment and trailing slash."""
    return path.split("?", 1)[0].split("#", 1)[0].rstrip("/") or "/"


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` is ``pattern``, or an instance of it (``/v/{id}`` matches ``/v/12``)."""
    pattern, path = _normal(pattern), _normal(path)
    if pattern == path:
        return True
    template = _template(pattern)
    return template is not None and template.match(path) is not None


def match_fixture(
    responses: dict[str, FixtureResponse], method: str, path: str
) -> FixtureResponse | None:
    """The response for ``method path``: an exact key first, then templated keys in order."""
    wanted = _normal(path)
    candidates = []
    for key, response in responses.items():
        key_method, _, key_path = key.partition(" ")
        if key_method.upper() != method.upper():
            continue
        if _normal(key_path) == wanted:
            return response
        candidates.append((key_path, response))
    for key_path, response in candidates:
        if path_matches(key_path, wanted):
            return response
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self) -> None:
        split = urlsplit(self.path)
        segments = unquote(split.path).lstrip("/").split("/", 1)
        api = segments[0]
        path = "/" + (segments[1] if len(segments) > 1 else "")
        body = self._body()
        owner = self.server.owner
        response = match_fixture(owner.fixtures_for(api), self.command, path)
        owner.record(
            RecordedRequest(
                api=api,
                method=self.command,
                path=path,
                query=parse_qs(split.query),
                body=body,
                matched=response is not None,
            )
        )
        if response is None:
            message = {"error": f"no fixture for {self.command} {path}"}
            self._send(404, {"Content-Type": "application/json"}, json.dumps(message).encode())
            return
        headers = dict(response.headers)
        lower = {name.lower() for name in headers}
        if response.json_ is not None:
            payload = json.dumps(response.json_).encode()
            default_type = "application/json"
        else:
            payload = (response.body or "").encode()
            default_type = "text/plain; charset=utf-8"
        if response.status in (204, 304):
            payload = b""  # these statuses have no body, whatever the fixture says
        if "content-type" not in lower and payload:
            headers["Content-Type"] = default_type
        self._send(response.status, headers, payload)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return None
        raw = self.rfile.read(min(length, _MAX_BODY))
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test report says what matters; no access log on stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: FixtureServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        super().__init__(address, _Handler)


class FixtureServer:
    """Canned API responses on a loopback port, for one test at a time.

    Use it as a context manager; :meth:`load` swaps in a test's fixtures and
    clears the recorded requests.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._fixtures: Fixtures = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FixtureServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        """Bind an ephemeral port on ``host`` and serve in a daemon thread."""
        self._server = _Server((self.host, 0), self)
        # A short poll keeps close() quick; the thread idles between tests anyway.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="enclave-fixtures",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fixture server is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://host:port``; a wildcard bind address is replaced by this machine's name."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def url_for(self, api: str) -> str:
        """The base URL that stands in for ``api``'s real one."""
        return f"{self.base_url}/{api}"

    def load(self, fixtures: Fixtures) -> None:
        """Serve these responses from now on (API -> 'METHOD /path' -> response); clear the log."""
        with self._lock:
            self._fixtures = {api: dict(responses) for api, responses in fixtures.items()}
            self.requests = []

    def fixtures_for(self, api: str) -> dict[str, FixtureResponse]:
        with self._lock:
            return self._fixtures.get(api, {})

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def unmatched(self) -> list[RecordedRequest]:
        """Requests since the last :meth:`load` that no fixture answered."""
        with self._lock:
            return [request for request in self.requests if not request.matched]
