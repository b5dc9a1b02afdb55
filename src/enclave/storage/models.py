"""Database rows. They stay in ``storage/``: services turn them into domain objects.

The schema is portable SQL (no SQLite-only types) because Postgres follows.
Every change to it goes through an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite keeps no zone, so values are converted to UTC on the way in and
    marked UTC on the way out; Postgres (``timestamptz``) round-trips as is.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # First characters of the key, for people to recognise it in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key; keys are 256-bit random, so no salt or KDF is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The highest class this key may receive from /mcp and the query API (egress
    # clearance); None: the workspace floor on /mcp, no limit on the query API.
    receive_clearance: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The person the key belongs to (None: a service key); the key never has more rights
    # than its owner has now (auth/keys.py). ``role`` is the key's own ceiling: member,
    # builder or admin; None: admin for an admin key, builder otherwise (keys made before roles).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)


class UserRow(Base):
    """A person who signed in with the identity provider (``auth/users.py``).

    ``issuer`` and ``subject`` (the ID token's ``iss`` and ``sub``) identify them;
    ``groups_json`` is the newest group list the provider sent, read on every request.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    groups_json: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    groups_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Disabled users cannot sign in, and their sessions and keys stop at the next request.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Provisioned over SCIM (``auth/directory.py``): SCIM then owns the name, e-mail, groups
    # and ``disabled`` (active), and sign-in changes none of them. ``user_name`` and
    # ``external_id`` are SCIM's userName and externalId; ``scim_json`` keeps the rest of the
    # SCIM resource as the provider sent it; ``version`` counts SCIM's changes (the ETag).
    provisioned: Mapped[bool] = mapped_column(Boolean, default=False)
    user_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    scim_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    __table_args__ = (
        UniqueConstraint("issuer", "subject", name="users_issuer_subject"),
        Index("users_user_name", "user_name", unique=True),
        Index("users_external_id", "external_id"),
    )


class ScimGroupRow(Base):
    """A group the identity provider manages over SCIM (``auth/directory.py``).

    ``display_name`` is the group's name everywhere else: ``group:NAME`` in
    ``identity.admins`` and ``identity.workspaces``, and a document's groups.
    """

    __tablename__ = "scim_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ScimGroupMemberRow(Base):
    """A provisioned user in a SCIM group; the user's ``groups_json`` follows these rows."""

    __tablename__ = "scim_group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("scim_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AuditEntryRow(Base):
    """One entry of the hash-chained audit log (``gateway/audit.py``); append only.

    ``payload`` is the canonical JSON of the entry and is what the hash covers;
    the other columns copy fields out of it for filtering and are checked
    against it by ``verify_chain``.
    """

    __tablename__ = "audit_log"

    # Assigned by the single writer, not by the database: the hash covers it.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    workspace: Mapped[str] = mapped_column(String(64))
    # No foreign key: entries outlive keys, and an audit write must never fail on one.
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditIntentRow(Base):
    """A request routed but not yet ended (``gateway/audit.py``): its partial audit entry.

    Not chained. Deleted in the transaction that appends the request's chained
    entry; one left over at start-up becomes an ``interrupted`` entry.
    """

    __tablename__ = "audit_intents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    # canonical_json of the entry as it will be chained if the request never ends.
    payload: Mapped[str] = mapped_column(Text)
    # The replica that routed the request; its intents are recovered when it stops
    # heartbeating (``cluster_members``). None: written before replicas (this server's).
    replica: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditChainHeadRow(Base):
    """The shared audit chain's head: one row (id 1), locked by each replica's batch.

    Locking it serialises appends from every replica into one chain; ``signed``
    is the signed head (a ``Checkpoint`` as JSON) for the newest entry.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    signed: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditCheckpointRow(Base):
    """A signed checkpoint of the shared audit chain (append only), in ``seq`` order."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    record: Mapped[str] = mapped_column(Text)


class ClusterMemberRow(Base):
    """A running replica and its last heartbeat (``cluster.py``)."""

    __tablename__ = "cluster_members"

    replica: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageRow(Base):
    """Tokens (and audio seconds) spent by requests (``gateway/usage.py``); append only."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The UTC day of ``time``, stored so reports group portably (no SQL date functions).
    day: Mapped[date] = mapped_column(Date, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    workspace: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # Seconds of audio transcribed or translated (0 for text requests).
    audio_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    # Requests folded into this row: a batch stores one row per day, key and model.
    requests: Mapped[int] = mapped_column(Integer, server_default="1")


class KnowledgeBaseRow(Base):
    """A knowledge base of one workspace (``knowledge/service.py``)."""

    __tablename__ = "knowledge_bases"

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    classification: Mapped[str] = mapped_column(String(64))
    # The model that embedded its chunks; queries must use the same one.
    embedding_model: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class KnowledgeDocumentRow(Base):
    """A document of a knowledge base: its indexed version and its latest job's state."""

    __tablename__ = "knowledge_documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id"), index=True)
    # A file's path as given (e.g. "policies/leave.pdf") or a URL; unique in its base.
    name: Mapped[str] = mapped_column(String(1024))
    __table_args__ = (UniqueConstraint("kb_id", "name"),)
    # Of the indexed version; null until one is indexed.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    classification: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    title: Mapped[str | None] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    # The latest job's state and, when it failed, why.
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    indexed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IngestionJobRow(Base):
    """One ingestion of one document version: a durable state machine (``knowledge/jobs.py``).

    queued -> extracting -> embedding -> indexed, or failed with a reason at
    any step. A server that dies mid-job finds it unfinished at start-up and
    runs it again from the start; ``attempts`` stops a poisonous document from
    crashing it forever.
    """

    __tablename__ = "ingestion_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id"), index=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("knowledge_documents.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "upload": the bytes wait in ``blob_path`` (under home); "url": fetched when run.
    source: Mapped[str] = mapped_column(String(8))
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    blob_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    media_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    # The replica working on the job and until when its lease holds (renewed while it works);
    # another replica takes the job over once the lease has run out.
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class KnowledgeBlobRow(Base):
    """An uploaded file waiting for its ingestion job, in the database so any replica can run it."""

    __tablename__ = "knowledge_blobs"

    job_id: Mapped[int] = mapped_column(ForeignKey("ingestion_jobs.id"), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class KnowledgeDocumentGroupRow(Base):
    """A group a document is restricted to; a document with none is seen by everyone."""

    __tablename__ = "knowledge_document_groups"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE"), primary_key=True
    )
    group_name: Mapped[str] = mapped_column(String(255), primary_key=True)

    __table_args__ = (Index("knowledge_document_groups_group", "group_name"),)


class AppRow(Base):
    """A deployed app of one workspace (``apps/service.py``); its specs are versions."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class AppVersionRow(Base):
    """One applied spec of an app, never changed: history and rollback read these."""

    __tablename__ = "app_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    # The canonical spec (apps/manifest.py), as JSON.
    spec_json: Mapped[str] = mapped_column(Text)
    # "apply", or "rollback to N".
    source: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    # The latest `enclave test` report recorded for this version, as JSON.
    test_results_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class AppDraftRow(Base):
    """A temporary, unlisted app for ``enclave test``: served as ``app/<name>@<id>``."""

    __tablename__ = "app_drafts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AppActionRow(Base):
    """An API call held for the user's confirmation (``apps/actions.py``).

    pending -> executed | cancelled | expired. The move out of pending is one
    conditional UPDATE, so an action runs at most once however often it is
    confirmed.
    """

    __tablename__ = "app_actions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The app and version (or draft id) whose API configuration runs the call.
    app_name: Mapped[str] = mapped_column(String(64))
    app_ref: Mapped[str] = mapped_column(String(64))
    api: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(1024))
    arguments_json: Mapped[str] = mapped_column(Text)
    # The user's request that led to it, so the result can be summarised for it.
    question: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UiSessionRow(Base):
    """A signed-in browser (``auth/sessions.py``): the cookie maps to an API key.

    Only the SHA-256 of the cookie's value is stored, like API keys. The CSRF
    token is not a credential on its own (it is useless without the cookie),
    so it is kept as is and shown to the page.
    """

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # Signed in with the identity provider: the user, and their tokens (access, refresh,
    # ID token) sealed with a key derived from the cookie, which is never stored; when the
    # provider was last asked for the user's groups.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    tokens: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ConversationRow(Base):
    """A chat in the web UI, owned by the key that started it (``chat/conversations.py``)."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    # Null until set, or until the first user message names it.
    title: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The model last used (or chosen) in this conversation.
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class ConversationMessageRow(Base):
    """One turn of a conversation. ``extra_json`` keeps an answer's citations, app
    fields, errors and whether it was stopped."""

    __tablename__ = "conversation_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    extra_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class JoinTokenRow(Base):
    """A token a remote runner presents to join (``runners/tokens.py``); hashed like API keys."""

    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The highest clearance a runner joining with it may declare; null: no cap.
    max_clearance: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeploymentRow(Base):
    """A deployment applied with ``enclave deployments apply`` (``runners/deployments.py``).

    Config entries are the baseline; a stored one with the same model replaces it.
    """

    __tablename__ = "deployments"

    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The validated DeploymentConfig, as JSON.
    spec_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class StoredResponseRow(Base):
    """A ``/v1/responses`` answer kept for ``previous_response_id`` and ``GET``, owned by
    the key that created it (``chat/stored_responses.py``)."""

    __tablename__ = "stored_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    # The response object as sent to the client.
    response_json: Mapped[str] = mapped_column(Text)
    # The conversation up to and including this response, as chat messages.
    messages_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
