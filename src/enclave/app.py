"""``create_app(settings)``: the control plane as an ASGI application.

Start-up order (the lifespan): open and migrate the database, make sure an
admin key exists, then load the models. Routers are mounted from ``api/``;
services are built here once and reached by routes through
:func:`enclave.api.deps.services`. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Route

from enclave import __version__
from enclave.api import admin_routes, health, ui_auth
from enclave.api.apps import routes as apps_routes
from enclave.api.conversations import routes as conversation_routes
from enclave.api.deps import Services
from enclave.api.errors import install_error_handlers
from enclave.api.knowledge import routes as knowledge_routes
from enclave.api.mcp import routes as mcp_routes
from enclave.api.mcp.server import MCP_PATH, McpEndpoint
from enclave.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from enclave.api.openai import audio as audio_routes
from enclave.api.openai import routes as openai_routes
from enclave.api.openapi import install_openapi
from enclave.api.platform import routes as platform_routes
from enclave.api.runners import routes as runner_routes
from enclave.api.scim import routes as scim_routes
from enclave.api.users import routes as user_routes
from enclave.apps.actions import ActionStore
from enclave.apps.mcp_tools import McpConnector
from enclave.apps.runner import AppRunner
from enclave.apps.service import AppService
from enclave.auth.directory import Directory
from enclave.auth.identity import CALLBACK_PATH, IdentityService
from enclave.auth.keys import KeyService
from enclave.auth.oidc import OidcClient
from enclave.auth.provisioning import Provisioning
from enclave.auth.sessions import SessionService
from enclave.chat.conversations import ConversationService
from enclave.chat.responses import ResponsesService, ResponseStore
from enclave.cluster import Membership, new_replica_id
from enclave.egress import EgressGuard, EgressPolicy
from enclave.errors import ConfigError, EnclaveError
from enclave.gateway.audit import AuditLog, audit_head_path
from enclave.gateway.audit_reader import AuditReader
from enclave.gateway.classification import Classifier, Levels
from enclave.gateway.detectors import DetectorSet
from enclave.gateway.limits import Limiter, limiter_from_url
from enclave.gateway.routing import RoutingTable
from enclave.gateway.service import Gateway
from enclave.gateway.usage import UsageLedger
from enclave.inference import InferenceService
from enclave.knowledge.grounding import AnswerStyle, GroundedChat
from enclave.knowledge.jobs import IngestionWorker
from enclave.knowledge.service import Embedder, KnowledgeService
from enclave.knowledge.store import open_store
from enclave.metrics import Metrics
from enclave.providers.registry import ModelRegistry
from enclave.runners.control import RunnerControl
from enclave.runners.fleet import RunnerFleet
from enclave.settings import Settings, resolve_secret
from enclave.storage.db import open_database, startup_lock
from enclave.storage.notify import KEYS_CHANNEL, ChangeListener
from enclave.ui import pages as ui_pages

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


def check_cluster(settings: Settings, dialect: str) -> None:
    """Replicas need a database and a limiter every replica shares: ConfigError otherwise."""
    if not settings.cluster.replicas:
        return
    if dialect != "postgresql":
        raise ConfigError(
            "cluster.replicas needs Postgres (database_url: env:ENCLAVE_DB_URL with a "
            f"postgresql:// URL); this database is {dialect}"
        )
    if settings.limiter_url is None:
        raise ConfigError(
            "cluster.replicas needs limiter_url (a redis:// URL every replica shares), "
            "or each replica would count limits on its own"
        )


def build_identity(
    settings: Settings, keys: KeyService, sessions: SessionService
) -> IdentityService | None:
    """Sign-in with the identity provider, when ``identity.oidc`` is configured.

    The provider sends the browser back to ``<public_url>/ui/oidc/callback``;
    that address must be absolute, and is never built from the Host header.
    """
    oidc = settings.identity.oidc
    if oidc is None:
        return None
    if settings.public_url is None:
        raise ConfigError(
            "identity.oidc needs public_url: the provider sends people back to "
            f"<public_url>{CALLBACK_PATH}"
        )
    client = OidcClient(oidc, settings.public_url + CALLBACK_PATH)
    return IdentityService(settings.identity, client, keys, sessions)


# A SCIM token is typed into the provider's console: long enough not to be guessed.
MIN_SCIM_TOKEN = 20


def scim_token(settings: Settings) -> str | None:
    """``identity.scim.token``, resolved now so a missing or short one stops start-up."""
    scim = settings.identity.scim
    if scim is None:
        return None
    token = resolve_secret(scim.token).strip()
    if len(token) < MIN_SCIM_TOKEN:
        raise ConfigError(
            f"identity.scim.token: the token must be at least {MIN_SCIM_TOKEN} characters "
            "(e.g. `openssl rand -base64 32`)"
        )
    return token


def build_provisioning(
    settings: Settings,
    token: str | None,
    sessions: sessionmaker[Session],
    keys: KeyService,
    ui_sessions: SessionService,
) -> Provisioning | None:
    """SCIM provisioning at ``/scim/v2``, when ``identity.scim`` is configured."""
    scim, oidc = settings.identity.scim, settings.identity.oidc
    if scim is None or token is None or oidc is None or settings.public_url is None:
        return None
    directory = Directory(
        sessions,
        issuer=oidc.issuer,
        match_claim=scim.match_claim,
        keys=keys,
        ui_sessions=ui_sessions,
    )
    return Provisioning(directory, token, settings.public_url)


def build_classifier(settings: Settings) -> Classifier:
    """Detectors switched on in ``detectors:``, each mapped to its class."""
    enabled = {name: level for name, level in settings.detectors.items() if level is not None}
    return Classifier(Levels(settings.classifications), DetectorSet(enabled), enabled)


async def seed_budgets(limiter: Limiter, usage: UsageLedger, settings: Settings) -> None:
    """Load tokens already spent this period, so a restart does not reset budgets."""
    now = datetime.now(UTC)
    starts = {
        "day": now.replace(hour=0, minute=0, second=0, microsecond=0),
        "month": now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
    }
    rules = [("key", settings.key_limits)] + [
        ("workspace", workspace.limits) for workspace in settings.workspaces
    ]
    for period, since in starts.items():
        kinds = {kind for kind, rule in rules if rule.token_budget and rule.budget_period == period}
        if not kinds:
            continue
        for (kind, subject), tokens in usage.tokens_since(since).items():
            if kind in kinds:
                try:
                    await limiter.seed_budget(kind, subject, tokens)
                except EnclaveError as exc:
                    # Redis is down: limited requests answer 503 until it is back (fail
                    # closed); the budgets are seeded again at the next start.
                    log.error("could not load the token budgets into the limiter: %s", exc.message)
                    return


def start_knowledge(services: Services, sessions: sessionmaker[Session]) -> None:
    """Open the chunk store and start the ingestion worker, if an embedding model is served.

    Without one the server still runs; knowledge routes answer 503 with the reason.
    """
    settings = services.settings
    embedder = Embedder(
        services.gateway.routing, services.inference, settings.knowledge.embedding_model
    )
    try:
        dimension = embedder.dimension
    except EnclaveError as exc:
        services.knowledge_problem = exc.message
        log.warning("knowledge is off: %s", exc.message)
        return
    try:
        store = open_store(settings.resolved_database_url, dimension)
    except ValueError as exc:  # e.g. the embedding model's dimension changed
        raise ConfigError(f"knowledge: {exc}") from None
    knowledge = KnowledgeService(
        sessions=sessions,
        store=store,
        embedder=embedder,
        levels=services.gateway.routing.levels,
        config=settings.knowledge,
        blob_dir=settings.home / "knowledge" / "uploads",
    )
    if settings.knowledge.url_fetch.allow_private:
        log.warning(
            "knowledge.url_fetch.allow_private is deprecated: list the hosts or networks "
            "knowledge URLs may reach in egress.allow instead"
        )
    worker = IngestionWorker(
        knowledge,
        settings.knowledge.url_fetch,
        services.egress,
        replica_id=services.membership.replica_id if services.membership else None,
        lease_s=settings.cluster.job_lease_s,
        replicas=settings.cluster.replicas,
    )
    worker.start()
    services.knowledge, services.ingestion = knowledge, worker
    services.grounding = GroundedChat(
        knowledge, services.gateway, settings.knowledge, answer_styles(settings)
    )


def answer_styles(settings: Settings) -> dict[str, AnswerStyle]:
    """Each model's answer style for grounded chat, by every name a request may use:
    bare, ``provider/model``, aliases (their first target's) and ``default``."""
    styles: dict[str, AnswerStyle] = {}
    for provider in settings.providers:
        for model in provider.models:
            style = model.answer_style or "generative"
            styles.setdefault(model.name, style)
            styles[f"{provider.name}/{model.name}"] = style
    for alias, targets in settings.aliases.items():
        if targets and targets[0] in styles:
            styles[alias] = styles[targets[0]]
    if settings.default_model in styles:  # "default" names the default model
        styles["default"] = styles[settings.default_model]
    return styles


def start_apps(services: Services, sessions: sessionmaker[Session]) -> None:
    """Stored apps, pending actions and the runner that serves ``app/<name>``."""
    settings = services.settings
    gateway = services.gateway
    services.apps = AppService(
        sessions=sessions,
        config=settings.apps,
        levels=gateway.routing.levels,
        routing=gateway.routing,
        knowledge=services.knowledge,
        egress=services.egress.policy,
        floor=lambda workspace: (
            gateway.policy(workspace).classification or gateway.routing.levels.lowest
        ),
    )
    # No proxies from the environment and no redirects: calls go where the app says,
    # and only where the outbound address guard allows (each request is vetted).
    services.apps_http = httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        transport=services.egress.transport("app-api"),
    )
    services.app_runner = AppRunner(
        apps=services.apps,
        actions=ActionStore(sessions, settings.apps.action_ttl_s),
        gateway=gateway,
        config=settings.apps,
        http=services.apps_http,
        embedder=services.knowledge.embedder if services.knowledge is not None else None,
        grounding=services.grounding,
        mcp=McpConnector(services.egress, settings.apps.mcp_commands),
    )


async def start_runners(services: Services, sessions: sessionmaker[Session]) -> RunnerFleet:
    """Joined runners and the placement loop that loads deployments on them."""
    settings = services.settings
    control = RunnerControl.build(settings, sessions, services.metrics)
    fleet = RunnerFleet(control, services.gateway.routing, settings.remote_runners)
    await fleet.start()
    return fleet


def announce_admin_key(secret: str) -> None:
    # Printed to the terminal once, deliberately not logged.
    print(
        "\n  Enclave created an admin API key. It is shown only this once:\n\n"
        f"    {secret}\n\n"
        "  Store it now. Sign in to the web UI or send it as a Bearer key;\n"
        "  create more with `enclave keys create`.\n",
        file=sys.stderr,
        flush=True,
    )


def create_app(settings: Settings, *, registry: ModelRegistry | None = None) -> FastAPI:
    """Build the app. ``registry`` lets tests inject fake providers."""
    metrics = Metrics()
    model_registry = registry or ModelRegistry.from_settings(settings)
    # Resolved now so that a missing secret stops start-up with a ConfigError.
    metrics_token = resolve_secret(settings.metrics_token) if settings.metrics_token else None
    provisioning_token = scim_token(settings)
    # /mcp: Enclave as an MCP server; its SDK task group runs for the app's lifetime.
    mcp_endpoint = McpEndpoint(lambda: app.state.services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        engine, sessions = open_database(settings.resolved_database_url)
        check_cluster(settings, engine.dialect.name)
        keys = KeyService(sessions, settings.identity)
        with startup_lock(engine):  # replicas starting together create each row once
            new_secret = bootstrap_admin_key(keys, settings)
            for workspace in settings.workspaces:
                keys.ensure_workspace(workspace.name)
            for name in settings.identity.workspaces:
                keys.ensure_workspace(name)
        if new_secret:
            announce_admin_key(new_secret)
        key_changes = None
        if engine.dialect.name == "postgresql":
            # Keys revoked (or re-cleared) by another replica or the CLI leave this
            # replica's cache at once, not after its TTL.
            key_changes = ChangeListener(engine.url, KEYS_CHANNEL, keys.forget, keys.forget_all)
            await asyncio.to_thread(key_changes.start)
        ui_sessions = SessionService(sessions, keys, settings.ui.session_ttl_s)
        app.state.engine = engine
        app.state.draining = False
        replica_id = new_replica_id(settings.cluster.replica_id)
        membership = Membership(
            sessions,
            replica_id,
            heartbeat_s=settings.cluster.heartbeat_s,
            member_timeout_s=settings.cluster.member_timeout_s,
        )
        if settings.cluster.replicas:
            membership.start()
        await model_registry.start()
        inference = InferenceService(model_registry, metrics, settings.input_limits)
        usage = UsageLedger(sessions)
        audit = AuditLog.from_settings(
            sessions, settings, replica=replica_id, live_replicas=membership.live
        )
        membership.on_beat(audit.sweep)
        limiter = limiter_from_url(
            resolve_secret(settings.limiter_url) if settings.limiter_url else None
        )
        await seed_budgets(limiter, usage, settings)
        usage.start()
        audit.start()
        gateway = Gateway(
            settings=settings,
            routing=RoutingTable.build(
                settings, model_registry.providers, model_registry.default_model
            ),
            classifier=build_classifier(settings),
            limiter=limiter,
            usage=usage,
            audit=audit,
            inference=inference,
            metrics=metrics,
        )
        services = app.state.services = Services(
            settings=settings,
            keys=keys,
            registry=model_registry,
            inference=inference,
            gateway=gateway,
            metrics=metrics,
            sessions=ui_sessions,
            identity=build_identity(settings, keys, ui_sessions),
            provisioning=build_provisioning(
                settings, provisioning_token, sessions, keys, ui_sessions
            ),
            conversations=ConversationService(sessions),
            responses=ResponsesService(ResponseStore(sessions)),
            audit_reader=AuditReader(sessions, audit, audit_head_path(settings)),
            metrics_token=metrics_token,
            membership=membership,
            egress=EgressGuard(EgressPolicy.from_config(settings.egress), audit=audit),
        )
        start_knowledge(services, sessions)
        start_apps(services, sessions)
        services.runners = await start_runners(services, sessions)
        app.state.runner_control = services.runners.control
        log.info("models ready: %s", ", ".join(gateway.routing.targets))
        mcp_running = mcp_endpoint.running()
        await mcp_running.__aenter__()
        try:
            yield
        finally:
            await mcp_running.__aexit__(None, None, None)
            if services.runners is not None:
                await services.runners.close()
            if services.apps_http is not None:
                await services.apps_http.aclose()
            if services.ingestion is not None:
                await services.ingestion.close()
            if services.knowledge is not None:
                services.knowledge.store.close()
            await model_registry.close()
            await limiter.close()
            usage.close()
            audit.close()
            if settings.cluster.replicas:
                membership.close()
            if key_changes is not None:
                await asyncio.to_thread(key_changes.close)
            engine.dispose()

    app = FastAPI(
        title="Enclave",
        version=__version__,
        summary="Sovereign, self-hosted AI platform with an OpenAI-compatible API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Redirects are built from settings.public_url, never from Host: see api/errors.py.
        redirect_slashes=False,
    )
    install_error_handlers(app, public_url=settings.public_url)
    install_openapi(app)
    app.include_router(health.router)
    app.include_router(openai_routes.router)
    app.router.routes.extend(openai_routes.routes)
    app.include_router(audio_routes.router)
    app.include_router(platform_routes.router)
    app.include_router(platform_routes.admin)
    app.include_router(knowledge_routes.router)
    app.include_router(apps_routes.router)
    app.include_router(apps_routes.actions)
    app.include_router(conversation_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(user_routes.router)
    if settings.identity.scim is not None:  # else /scim/v2 is not there at all (404)
        app.include_router(scim_routes.router)
    app.include_router(runner_routes.joining)
    app.include_router(mcp_routes.router)
    app.include_router(mcp_routes.admin)
    # POST carries JSON-RPC, DELETE ends a session; no GET stream (stateless: 405).
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp_endpoint, methods=["POST", "DELETE"]))
    app.include_router(ui_auth.router)
    # The web UI: pages at /, /login, /knowledge, /apps, /admin; its files at /static.
    app.include_router(ui_pages.router)
    app.mount(ui_pages.STATIC_PATH, ui_pages.static_files(), name="static")
    app.add_middleware(openai_routes.GatewayFastPath, fastapi_app=app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    upload_limit = settings.knowledge.max_document_bytes + 1024 * 1024  # + multipart framing
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        larger=[
            (knowledge_routes.UPLOAD_PATH, max(upload_limit, settings.max_body_bytes)),
            (audio_routes.AUDIO_PATH, settings.audio.max_file_bytes + 1024 * 1024),
        ],
        max_json_depth=settings.input_limits.max_json_depth,
    )
    return app
