"""A mock HR API for the hr-assistant example, matching hr-openapi.yaml.

Run it next to ``enclave serve``::

    HR_TOKEN=demo-token python examples/hr-assistant/mock_hr_api.py --port 8090

It serves ``/api/vacancies`` and friends from memory (standard library only)
and, when ``HR_TOKEN`` is set, refuses requests without
``Authorization: Bearer $HR_TOKEN``, so you can see the app's header
secret at work. Every request is printed, so you can watch what the app calls.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VACANCIES: dict[int, dict[str, Any]] = {
    12: {"id": 12, "title": "Welder", "department": "Public works", "hours_per_week": 36},
    14: {"id": 14, "title": "Case officer", "department": "Social services", "hours_per_week": 32},
}
CANDIDATES: dict[int, list[dict[str, Any]]] = {
    12: [{"id": 1, "name": "Ada Jensen", "status": "interview"}],
    14: [
        {"id": 2, "name": "Omar Lind", "status": "applied"},
        {"id": 3, "name": "Mia Berg", "status": "offer"},
    ],
}
_LOCK = threading.Lock()
_VACANCY = re.compile(r"^/api/vacancies/(\d+)$")
_CANDIDATES = re.compile(r"^/api/vacancies/(\d+)/candidates$")


class Handler(BaseHTTPRequestHandler):
    server_version = "mock-hr/1.0"

    def _send(self, status: int, payload: Any = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        token = os.environ.get("HR_TOKEN")
        if token and self.headers.get("authorization") != f"Bearer {token}":
            self._send(401, {"error": "missing or wrong bearer token"})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        url = urlsplit(self.path)
        if url.path == "/api/vacancies":
            department = parse_qs(url.query).get("department", [None])[0]
            with _LOCK:
                found = [
                    v
                    for v in VACANCIES.values()
                    if department is None or v["department"].lower() == department.lower()
                ]
            self._send(200, found)
        elif match := _CANDIDATES.match(url.path):
            self._send(200, CANDIDATES.get(int(match.group(1)), []))
        elif match := _VACANCY.match(url.path):
            vacancy = VACANCIES.get(int(match.group(1)))
            self._send(200, vacancy) if vacancy else self._send(404, {"error": "no such vacancy"})
        else:
            self._send(404, {"error": f"no route GET {url.path}"})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        if urlsplit(self.path).path != "/api/vacancies":
            self._send(404, {"error": "no route"})
            return
        length = int(self.headers.get("content-length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
            title = str(data["title"])
        except (ValueError, KeyError):
            self._send(400, {"error": "a vacancy needs a title"})
            return
        with _LOCK:
            number = max(VACANCIES, default=0) + 1
            VACANCIES[number] = {
                "id": number,
                "title": title,
                "department": str(data.get("department", "")),
                "hours_per_week": int(data.get("hours_per_week", 36)),
            }
            self._send(201, VACANCIES[number])

    def do_DELETE(self) -> None:
        if not self._authorised():
            return
        match = _VACANCY.match(urlsplit(self.path).path)
        with _LOCK:
            found = match is not None and VACANCIES.pop(int(match.group(1)), None) is not None
        self._send(204) if found else self._send(404, {"error": "no such vacancy"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"mock HR API on http://{args.host}:{server.server_port}/api", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
