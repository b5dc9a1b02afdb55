"""Stored apps: apply, versions, rollback, drafts, and loading an app to serve it.

Apps belong to a workspace and every lookup is by (workspace, name), so
another workspace's key gets 404. Each apply that changes the canonical spec
stores a new, immutable version; an apply that changes nothing stores
nothing, which makes ``enclave apply`` idempotent. A rollback stores the old
spec again as a new version, so history only grows.

A draft is an unlisted copy of an app that ``enclave test`` runs against
fixtures; it is served as ``app/<name>@<draft id>`` and expires.

Checks that need the server happen here: the model must exist, the class
must be known and may not be below the workspace's floor, knowledge bases
must exist in the workspace, and headers may only reference the environment
variables ``apps.secret_env`` allows. A rollback to a version whose class is
now below the floor is refused the same way; the runner checks the floor
again on every request, because the configured floor can change.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.apps.calls import referenced_env
from enclave.apps.manifest import (
    DATA_URI,
    ManifestError,
    canonical,
    diff,
    parse_app_document,
    to_yaml,
)
from enclave.apps.openapi import Operation, load_operations
from enclave.apps.spec import ApiSpec, AppManifest, McpSpec
from enclave.egress import EgressPolicy, url_refusal
from enclave.errors import InvalidRequest, ModelNotFound, NotFound
from enclave.gateway.classification import Levels
from enclave.gateway.routing import RoutingTable
from enclave.knowledge.service import KnowledgeService, utc_now
from enclave.settings import AppsConfig
from enclave.storage.models import AppDraftRow, AppRow, AppVersionRow, WorkspaceRow

APP_MODEL_PREFIX = "app/"
_MODEL_ID = re.compile(r"^app/([a-z0-9][a-z0-9-]{0,62})(?:@(drf_[a-z0-9]+))?$")


class AppNotFound(NotFound):
    default_code = "app_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"There is no app '{name}' in this workspace. GET /api/apps lists them.", param="model"
        )


@dataclass(frozen=True, slots=True)
class ApplyResult:
    name: str
    version: int
    changed: bool
    created: bool
    diff: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "changed": self.changed,
            "created": self.created,
            "diff": self.diff,
        }


@dataclass(frozen=True, slots=True)
class AppApi:
    """One API of a loaded app: its spec and its operations as tools."""

    spec: ApiSpec
    operations: tuple[Operation, ...]


@dataclass(slots=True)
class LoadedApp:
    """An app ready to serve: one version (or a draft), with its operations parsed."""

    name: str
    ref: str  # the version number, or the draft id
    version: int | None
    manifest: AppManifest
    apis: dict[str, AppApi]
    # Filled by the runner: each operation's description embedding, for routing.
    vectors: dict[str, Any] = field(default_factory=dict)
    mcps: dict[str, McpSpec] = field(default_factory=dict)
    # Filled by the runner from each MCP server's tools/list: (operation, read only).
    mcp_tools: dict[str, list[tuple[Operation, bool]]] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return APP_MODEL_PREFIX + self.name + ("" if self.version else f"@{self.ref}")

    def operations(self) -> list[Operation]:
        listed = [op for api in self.apis.values() for op in api.operations]
        return listed + [op for tools in self.mcp_tools.values() for op, _ in tools]

    def find(self, api: str, operation: str) -> Operation | None:
        if api in self.mcp_tools:
            return next((op for op, _ in self.mcp_tools[api] if op.matches(operation)), None)
        found = self.apis.get(api)
        if found is None:
            return None
        return next((op for op in found.operations if op.matches(operation)), None)

    def read_only(self, operation: Operation) -> bool:
        """Whether an MCP tool said ``readOnlyHint: true`` (API operations: False)."""
        tools = self.mcp_tools.get(operation.api, [])
        return any(op.key == operation.key and flag for op, flag in tools)


def parse_model_id(model: str) -> tuple[str, str | None] | None:
    """``app/<name>`` or ``app/<name>@<draft>`` -> (name, draft id); None if not an app."""
    if not model.startswith(APP_MODEL_PREFIX):
        return None
    match = _MODEL_ID.match(model)
    if match is None:
        raise InvalidRequest(
            f"'{model}' is not a valid app model id (app/<name>).",
            param="model",
            code="model_not_found",
        )
    return match.group(1), match.group(2)


def _summary(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What the app store shows of an app: name, model id, description and avatar URL."""
    metadata = spec.get("metadata") or {}
    return {
        "name": name,
        "model_id": APP_MODEL_PREFIX + name,
        "description": metadata.get("description", ""),
        "avatar_url": f"/api/apps/{name}/avatar" if metadata.get("avatar") else None,
    }


class AppService:
    """Apps of every workspace, always scoped to one."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        config: AppsConfig,
        levels: Levels,
        routing: RoutingTable,
        knowledge: KnowledgeService | None,
        floor: Callable[[str], str] | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.levels = levels
        self.routing = routing
        self.knowledge = knowledge
        self.egress = egress or EgressPolicy()  # apis[].url must pass (egress.allow)
        # Workspace name -> its configured floor (workspaces[].classification).
        self._floor = floor or (lambda workspace: levels.lowest)
        # (workspace id, name, ref, app row id) -> LoadedApp; versions never change, so no
        # invalidation. The row id tells a re-created app's version 1 from the deleted one's.
        self._loaded: OrderedDict[tuple[int, str, str, int], LoadedApp] = OrderedDict()

    # -- validation ----------------------------------------------------------

    def validate(self, workspace_id: int, document: Any) -> AppManifest:
        """Parse a canonical spec from a request and run the server-side checks (400)."""
        if not isinstance(document, dict):
            raise InvalidRequest("'spec' must be an App document (an object).", param="spec")
        try:
            manifest = parse_app_document(document)
        except ManifestError as exc:
            raise InvalidRequest("Invalid app: " + "; ".join(exc.problems), param="spec") from None
        spec = manifest.spec
        if spec.classification is not None and spec.classification not in self.levels.rank:
            raise InvalidRequest(
                f"spec.classification: unknown class '{spec.classification}' "
                f"(known: {', '.join(self.levels.names)}).",
                param="spec.classification",
            )
        self.check_floor(workspace_id, spec.classification)
        try:
            self.routing.candidates(spec.model, "chat")
        except (ModelNotFound, InvalidRequest):
            raise InvalidRequest(
                f"spec.model: no chat model or alias '{spec.model}' is configured "
                "(GET /v1/models lists them).",
                param="spec.model",
            ) from None
        if spec.knowledge:
            if self.knowledge is None:
                raise InvalidRequest(
                    "spec.knowledge: knowledge is not available on this server.",
                    param="spec.knowledge",
                )
            known = {base.name for base in self.knowledge.list_bases(workspace_id)}
            missing = [name for name in spec.knowledge if name not in known]
            if missing:
                raise InvalidRequest(
                    f"spec.knowledge: no knowledge base named {', '.join(missing)} in this "
                    "workspace (enclave knowledge create NAME).",
                    param="spec.knowledge",
                )
        allowed = set(self.config.secret_env)
        for index, api in enumerate(spec.apis):
            if (refusal := url_refusal(self.egress, api.url)) is not None:
                raise InvalidRequest(
                    f"spec.apis[{index}].url: {refusal}.", param=f"spec.apis[{index}].url"
                )
            refused = sorted(referenced_env(api.headers) - allowed)
            if refused:
                raise InvalidRequest(
                    f"spec.apis[{index}].headers: env:{', env:'.join(refused)} is not in the "
                    "server's apps.secret_env, so the app may not read it.",
                    param=f"spec.apis[{index}].headers",
                )
            exchange = api.auth.token_exchange if api.auth else None
            if exchange is not None:
                where = f"spec.apis[{index}].auth.token_exchange"
                if (refusal := url_refusal(self.egress, exchange.token_url)) is not None:
                    raise InvalidRequest(
                        f"{where}.token_url: {refusal}.", param=f"{where}.token_url"
                    )
                secret = referenced_env({"client_secret": exchange.client_secret or ""})
                if secret - allowed:
                    raise InvalidRequest(
                        f"{where}.client_secret: env:{min(secret)} is not in the server's "
                        "apps.secret_env, so the app may not read it.",
                        param=f"{where}.client_secret",
                    )
        self._check_mcps(spec.mcps)
        avatar = manifest.metadata.avatar
        if avatar is not None:
            self._avatar_bytes(avatar)
        return manifest

    def _check_mcps(self, mcps: list[McpSpec]) -> None:
        """Each MCP server's class, URL, header secrets and (stdio) command are allowed."""
        allowed = set(self.config.secret_env)
        commands = [list(command) for command in self.config.mcp_commands]
        for index, mcp in enumerate(mcps):
            where = f"spec.mcps[{index}]"
            if mcp.clearance is not None and mcp.clearance not in self.levels.rank:
                raise InvalidRequest(
                    f"{where}.clearance: unknown class '{mcp.clearance}' "
                    f"(known: {', '.join(self.levels.names)}).",
                    param=f"{where}.clearance",
                )
            if mcp.url is not None and (refusal := url_refusal(self.egress, mcp.url)) is not None:
                raise InvalidRequest(f"{where}.url: {refusal}.", param=f"{where}.url")
            refused = sorted(referenced_env(mcp.headers) - allowed)
            if refused:
                raise InvalidRequest(
                    f"{where}.headers: env:{', env:'.join(refused)} is not in the server's "
                    "apps.secret_env, so the app may not read it.",
                    param=f"{where}.headers",
                )
            if mcp.command is not None and list(mcp.command) not in commands:
                raise InvalidRequest(
                    f"{where}.command: {mcp.command} is not one of the server's "
                    "apps.mcp_commands; an admin lists the stdio servers apps may start.",
                    param=f"{where}.command",
                )

    def mcp_clearance(self, mcp: McpSpec) -> str:
        """The highest class an MCP server may receive: its declared ``clearance``, else
        the lowest class (fail closed: the app's author says when it may receive more)."""
        if mcp.clearance is not None and mcp.clearance in self.levels.rank:
            return mcp.clearance
        return self.levels.lowest

    def workspace_floor(self, workspace_id: int) -> tuple[str, str]:
        """(workspace name, its configured floor) for a workspace id."""
        with self.sessions() as session:
            row = session.get(WorkspaceRow, workspace_id)
            if row is None:
                raise NotFound(f"There is no workspace with id {workspace_id}.")
            name = row.name
        return name, self._floor(name)

    def check_floor(self, workspace_id: int, level: str | None, *, what: str = "") -> None:
        """Refuse (400) an app class below the workspace's floor: an app only raises it.

        ``level`` None means the app declares no class and takes the floor.
        """
        if level is None:
            return
        workspace, floor = self.workspace_floor(workspace_id)
        if self.levels.rank[level] >= self.levels.rank[floor]:
            return
        raise InvalidRequest(
            f"spec.classification: '{level}'{what} is below the floor of workspace "
            f"'{workspace}' ({floor}); an app can raise its workspace's class, never lower "
            f"it. Set spec.classification to {floor} or higher, or leave it out to use "
            "the floor.",
            param="spec.classification",
            code="below_workspace_floor",
        )

    def _avatar_bytes(self, avatar: str) -> tuple[bytes, str]:
        match = DATA_URI.match(avatar)
        if match is None:  # parse_app_document refuses these already; kept as a guard
            raise InvalidRequest(
                "metadata.avatar must be an image data: URI (enclave apply inlines image files).",
                param="metadata.avatar",
            )
        data = base64.b64decode(match.group(2))
        if len(data) > self.config.max_avatar_bytes:
            raise InvalidRequest(
                f"metadata.avatar is {len(data)} bytes; the limit is "
                f"{self.config.max_avatar_bytes} (apps.max_avatar_bytes).",
                param="metadata.avatar",
            )
        return data, f"image/{match.group(1)}"

    # -- apply, read, history ------------------------------------------------

    @staticmethod
    def _find_app_row(session: Session, workspace_id: int, name: str) -> AppRow | None:
        return session.scalar(
            select(AppRow).where(AppRow.workspace_id == workspace_id, AppRow.name == name)
        )

    def _app_row(self, session: Session, workspace_id: int, name: str) -> AppRow:
        row = self._find_app_row(session, workspace_id, name)
        if row is None:
            raise AppNotFound(name)
        return row

    @staticmethod
    def _version_row(session: Session, app_id: int, version: int) -> AppVersionRow | None:
        return session.scalar(
            select(AppVersionRow).where(
                AppVersionRow.app_id == app_id, AppVersionRow.version == version
            )
        )

    def apply(
        self,
        workspace_id: int,
        name: str,
        document: Any,
        *,
        key_id: int | None,
        dry_run: bool = False,
    ) -> ApplyResult:
        """Store the spec as a new version if it differs from the current one."""
        manifest = self.validate(workspace_id, document)
        if manifest.name != name:
            raise InvalidRequest(
                f"metadata.name is '{manifest.name}' but the URL names '{name}'.",
                param="metadata.name",
            )
        spec = canonical(manifest)
        with self.sessions.begin() as session:
            row = self._find_app_row(session, workspace_id, name)
            current = None
            if row is not None:
                version_row = self._version_row(session, row.id, row.current_version)
                current = json.loads(version_row.spec_json) if version_row else None
            changes = diff(current, spec, name)
            if current == spec:
                assert row is not None
                return ApplyResult(name, row.current_version, False, False, "")
            created = row is None
            version = 1 if row is None else self._next_version(session, row.id)
            if dry_run:
                return ApplyResult(name, version, True, created, changes)
            now = utc_now()
            if row is None:
                row = AppRow(
                    workspace_id=workspace_id,
                    name=name,
                    current_version=version,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
            row.current_version, row.updated_at = version, now
            session.add(
                AppVersionRow(
                    app_id=row.id,
                    version=version,
                    spec_json=json.dumps(spec, ensure_ascii=False),
                    source="apply",
                    created_by=key_id,
                    created_at=now,
                )
            )
            return ApplyResult(name, version, True, created, changes)

    @staticmethod
    def _next_version(session: Session, app_id: int) -> int:
        latest = session.scalar(
            select(func.max(AppVersionRow.version)).where(AppVersionRow.app_id == app_id)
        )
        return int(latest or 0) + 1

    def list_apps(self, workspace_id: int) -> list[dict[str, Any]]:
        """The app store: name, description, avatar URL, version and model of each app."""
        with self.sessions() as session:
            rows = session.execute(
                select(AppRow, AppVersionRow)
                .join(
                    AppVersionRow,
                    (AppVersionRow.app_id == AppRow.id)
                    & (AppVersionRow.version == AppRow.current_version),
                )
                .where(AppRow.workspace_id == workspace_id)
                .order_by(AppRow.name)
            ).all()
        apps = []
        for app, version in rows:
            spec = json.loads(version.spec_json)
            apps.append(
                {
                    **_summary(app.name, spec),
                    "version": app.current_version,
                    "model": (spec.get("spec") or {}).get("model", "default"),
                    "created_at": app.created_at.isoformat(),
                    "updated_at": app.updated_at.isoformat(),
                }
            )
        return apps

    def get_app(self, workspace_id: int, name: str, version: int | None = None) -> dict[str, Any]:
        """One app at its current (or a given) version, with its canonical spec and YAML."""
        with self.sessions() as session:
            row = self._app_row(session, workspace_id, name)
            number = version or row.current_version
            version_row = self._version_row(session, row.id, number)
            if version_row is None:
                raise NotFound(f"App '{name}' has no version {number}.", param="version")
            spec = json.loads(version_row.spec_json)
            return {
                **_summary(name, spec),
                "version": number,
                "current_version": row.current_version,
                "spec": spec,
                "yaml": to_yaml(spec),
                "created_at": row.created_at.isoformat(),
                "updated_at": row.updated_at.isoformat(),
                "test_results": json.loads(version_row.test_results_json)
                if version_row.test_results_json
                else None,
            }

    def versions(self, workspace_id: int, name: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            row = self._app_row(session, workspace_id, name)
            versions = session.scalars(
                select(AppVersionRow)
                .where(AppVersionRow.app_id == row.id)
                .order_by(AppVersionRow.version.desc())
            ).all()
            return [
                {
                    "version": v.version,
                    "created_at": v.created_at.isoformat(),
                    "created_by": v.created_by,
                    "source": v.source,
                    "current": v.version == row.current_version,
                    "tested": v.test_results_json is not None,
                }
                for v in versions
            ]

    def rollback(
        self, workspace_id: int, name: str, to: int, *, key_id: int | None
    ) -> dict[str, Any]:
        """Make version ``to``'s spec current again, as a new version."""
        with self.sessions.begin() as session:
            row = self._app_row(session, workspace_id, name)
            target = self._version_row(session, row.id, to)
            if target is None:
                raise NotFound(
                    f"App '{name}' has no version {to} (enclave apps history {name}).",
                    param="to",
                )
            target_spec = json.loads(target.spec_json).get("spec") or {}
            self.check_floor(
                workspace_id, target_spec.get("classification"), what=f" (version {to})"
            )
            current = self._version_row(session, row.id, row.current_version)
            if current is not None and current.spec_json == target.spec_json:
                return {"name": name, "version": row.current_version, "from": to, "changed": False}
            version = self._next_version(session, row.id)
            now = utc_now()
            session.add(
                AppVersionRow(
                    app_id=row.id,
                    version=version,
                    spec_json=target.spec_json,
                    source=f"rollback to {to}",
                    created_by=key_id,
                    created_at=now,
                )
            )
            row.current_version, row.updated_at = version, now
            return {"name": name, "version": version, "from": to, "changed": True}

    def delete_app(self, workspace_id: int, name: str) -> None:
        with self.sessions.begin() as session:
            row = self._app_row(session, workspace_id, name)
            session.execute(delete(AppVersionRow).where(AppVersionRow.app_id == row.id))
            session.delete(row)
        # SQLite may give the next app the same row id; Postgres never does (other replicas).
        for key in [key for key in self._loaded if key[:2] == (workspace_id, name)]:
            del self._loaded[key]

    def avatar(self, workspace_id: int, name: str) -> tuple[bytes, str]:
        """The current version's ``metadata.avatar`` as (bytes, media type); 404 without one."""
        with self.sessions() as session:
            row = self._app_row(session, workspace_id, name)
            version_row = self._version_row(session, row.id, row.current_version)
            if version_row is None:
                raise NotFound(
                    f"App '{name}' has no version {row.current_version}.", param="version"
                )
            spec = json.loads(version_row.spec_json)
        avatar = (spec.get("metadata") or {}).get("avatar")
        if not avatar:
            raise NotFound(f"App '{name}' has no avatar.")
        return self._avatar_bytes(avatar)

    def record_test_results(self, workspace_id: int, name: str, report: dict[str, Any]) -> int:
        """Keep an ``enclave test`` report with the current version; returns that version."""
        with self.sessions.begin() as session:
            row = self._app_row(session, workspace_id, name)
            version_row = self._version_row(session, row.id, row.current_version)
            assert version_row is not None
            version_row.test_results_json = json.dumps(report, ensure_ascii=False)
            return row.current_version

    # -- drafts --------------------------------------------------------------

    def create_draft(self, workspace_id: int, document: Any) -> dict[str, Any]:
        """Store an unlisted copy of an app to test; served as ``app/<name>@<id>``."""
        manifest = self.validate(workspace_id, document)
        now = utc_now()
        draft_id = "drf_" + secrets.token_hex(8)
        expires = now + timedelta(seconds=self.config.draft_ttl_s)
        with self.sessions.begin() as session:
            session.execute(delete(AppDraftRow).where(AppDraftRow.expires_at < now))
            session.add(
                AppDraftRow(
                    id=draft_id,
                    workspace_id=workspace_id,
                    name=manifest.name,
                    spec_json=json.dumps(canonical(manifest), ensure_ascii=False),
                    created_at=now,
                    expires_at=expires,
                )
            )
        return {
            "id": draft_id,
            "name": manifest.name,
            "model": f"{APP_MODEL_PREFIX}{manifest.name}@{draft_id}",
            "expires_at": expires.isoformat(),
        }

    def delete_draft(self, workspace_id: int, draft_id: str) -> None:
        with self.sessions.begin() as session:
            deleted = session.execute(
                delete(AppDraftRow).where(
                    AppDraftRow.id == draft_id, AppDraftRow.workspace_id == workspace_id
                )
            )
            if not deleted.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"There is no draft '{draft_id}' in this workspace.")
        for key in [key for key in self._loaded if key[2] == draft_id]:
            del self._loaded[key]

    # -- serving -------------------------------------------------------------

    def load(self, workspace_id: int, name: str, ref: str | None = None) -> LoadedApp:
        """The app to serve: its current version, a given version (``"3"``) or a draft.

        Parsed apps are cached by (workspace, name, version or draft id, app row
        id): versions never change, so only which version is current is read per
        request. That read is what keeps replicas in step: an app applied or
        rolled back on any replica is served by every replica from the next
        request after the commit (no staleness beyond it, no invalidation
        message to lose), at the cost of one indexed row read per request.
        """
        with self.sessions() as session:
            draft = None
            if ref is not None and ref.startswith("drf_"):
                draft = session.get(AppDraftRow, ref)
                if (
                    draft is None
                    or draft.workspace_id != workspace_id
                    or draft.name != name
                    or draft.expires_at < utc_now()
                ):
                    raise AppNotFound(f"{name}@{ref}")
                version, key = None, (workspace_id, name, ref, 0)
            else:
                row = self._app_row(session, workspace_id, name)
                version = int(ref) if ref else row.current_version
                key = (workspace_id, name, str(version), row.id)
            cached = self._loaded.get(key)
            if cached is not None:
                self._loaded.move_to_end(key)
                return cached
            if draft is not None:
                spec_json = draft.spec_json
            else:
                assert version is not None
                version_row = self._version_row(session, row.id, version)
                if version_row is None:
                    raise AppNotFound(f"{name} version {version}")
                spec_json = version_row.spec_json
        manifest = AppManifest.model_validate(json.loads(spec_json))
        apis = {}
        for api in manifest.spec.apis:
            assert isinstance(api.schema_, dict)
            operations = load_operations(api.schema_, api.name, only=api.operations)
            apis[api.name] = AppApi(api, tuple(operations))
        mcps = {mcp.name: mcp for mcp in manifest.spec.mcps}
        loaded = LoadedApp(name, key[2], version, manifest, apis, mcps=mcps)
        self._loaded[key] = loaded
        while len(self._loaded) > 256:
            self._loaded.popitem(last=False)
        return loaded
