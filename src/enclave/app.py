"""``create_app(settings)``: the control plane as an ASGI application.

Start-up order (the lifespan): open and migrate the database, make sure an
admin key exists, then load the models. Routers are mounted from ``api/``;
services are built here once and reached by routes through
:func:`enclave.api.deps.services`. Nothing is created at import time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from enclave import __version__
from enclave.api import health
from enclave.api.deps import Services
from enclave.api.errors import install_error_handlers
from enclave.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from enclave.api.openai import routes as openai_routes
from enclave.api.platform import routes as platform_routes
from enclave.auth.keys import KeyService
from enclave.inference import InferenceService
from enclave.metrics import Metrics
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings, resolve_secret
from enclave.storage.db import open_database

log = logging.getLogger(__name__)


def bootstrap_admin_key(keys: KeyService, settings: Settings) -> str | None:
    """Ensure an admin key exists. Returns a newly generated secret, if one was made.

    With ``ENCLAVE_ADMIN_KEY`` set, that key is registered (hashed) as an admin
    key of the default workspace. A revoked one stays revoked: revocation is
    never undone by a restart. Otherwise, on the first start only, a key is
    generated; the caller shows it once and it is never retrievable again.
    """
    if settings.admin_key is not None:
        secret = settings.admin_key.get_secret_value()
        existing = keys.find(secret)
        if existing is None:
            keys.create("admin (ENCLAVE_ADMIN_KEY)", is_admin=True, key=secret)
        elif existing.status != "active":
            log.warning(
                "ENCLAVE_ADMIN_KEY (key id %d) is %s and will not authenticate; "
                "set a new ENCLAVE_ADMIN_KEY or create one with `enclave keys create --admin`",
                existing.id,
                existing.status,
            )
        return None
    if keys.has_admin_key():
        return None
    secret, _ = keys.create("admin (first start)", is_admin=True)
    return secret


def announce_admin_key(secret: str) -> None:
    # Printed to the terminal once, deliberately not logged.
    print(
        "\n  Enclave created an admin API key. It is shown only this once:\n\n"
        f"    {secret}\n\n"
        "  Store it now. Create more with `enclave keys create`.\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(settings: Settings, *, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app. ``registry`` lets tests inject fake providers."""
    metrics = Metrics()
    model_registry = registry or ModelRegistry.from_settings(settings)
    # Resolved now so that a missing secret stops start-up with a ConfigError.
    metrics_token = resolve_secret(settings.metrics_token) if settings.metrics_token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        engine, sessions = open_database(settings.resolved_database_url)
        keys = KeyService(sessions)
        new_secret = bootstrap_admin_key(keys, settings)
        if new_secret:
            announce_admin_key(new_secret)
        app.state.engine = engine
        app.state.services = Services(
            settings=settings,
            keys=keys,
            registry=model_registry,
            inference=InferenceService(model_registry, metrics),
            metrics=metrics,
            metrics_token=metrics_token,
        )
        await model_registry.start()
        log.info("models ready: %s", ", ".join(card.id for card in model_registry.cards()))
        try:
            yield
        finally:
            await model_registry.close()
            engine.dispose()

    app = FastAPI(
        title="Enclave",
        version=__version__,
        summary="Sovereign, self-hosted AI platform with an OpenAI-compatible API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(openai_routes.router)
    app.include_router(platform_routes.router)
    app.include_router(platform_routes.admin)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
