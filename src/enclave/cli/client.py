"""Talking to a running server: where it is, which key to use, and clear errors.

Commands that work through the API (``enclave providers``, ``enclave
knowledge``) take ``--url`` and ``--key``, defaulting to ``$ENCLAVE_URL``
(else the configured host and port) and ``$ENCLAVE_API_KEY``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

from enclave.cli.common import settings_or_exit

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Server base URL (default: $ENCLAVE_URL, else the configured host and port).",
        show_default=False,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", help="API key (default: $ENCLAVE_API_KEY).", show_default=False),
]


def server(config: Path | None, url: str | None, key: str | None) -> tuple[str, str]:
    """The server URL and API key from the options, the environment or the config; exit 2."""
    key = key or os.environ.get("ENCLAVE_API_KEY")
    if not key:
        typer.secho("error: give --key or set ENCLAVE_API_KEY", fg="red", err=True)
        raise typer.Exit(2)
    url = url or os.environ.get("ENCLAVE_URL")
    if not url:
        settings = settings_or_exit(config)
        url = f"http://{settings.host}:{settings.port}"
    return url.rstrip("/"), key


def connect(
    config: Path | None, url: str | None, key: str | None, *, timeout: float = 60.0
) -> ApiClient:
    """An :class:`ApiClient` for the server and key the options name (see :func:`server`)."""
    base, secret = server(config, url, key)
    return ApiClient(base, secret, timeout=timeout)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


class ApiClient:
    """A small JSON client for the platform API that turns errors into exit status 1."""

    def __init__(self, url: str, key: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the JSON answer (None for 204), or exit 1 with the reason."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {exc}")
        if response.status_code >= 400:
            fail(f"{method} {path} answered {response.status_code}: {error_message(response)}")
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def error_message(response: httpx.Response) -> str:
    """The server's error message, or the raw body."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except ValueError:
        pass
    return response.text[:500]
