"""Knowledge bases, documents and ingestion jobs.

Chunks, their full-text index and their vectors are not here: the chunk
store (``knowledge/store``) creates its own tables, because they depend on
the backend (FTS5 and sqlite-vec, or tsvector and pgvector) and on the
embedding model's dimension.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]


def upgrade() -> None:
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("classification", sa.String(64), nullable=False),
        sa.Column("embedding_model", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.UniqueConstraint("workspace_id", "name", name="uq_knowledge_bases_workspace_name"),
    )
    op.create_index("ix_knowledge_bases_workspace_id", "knowledge_bases", ["workspace_id"])
    op.create_table(
        "knowledge_documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kb_id", sa.Integer, sa.ForeignKey("knowledge_bases.id"), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("classification", sa.String(64), nullable=False),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("title", sa.Text, nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("pages", sa.Integer, nullable=True),
        sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        *_timestamps(),
        sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("kb_id", "name", name="uq_knowledge_documents_kb_name"),
    )
    op.create_index("ix_knowledge_documents_kb_id", "knowledge_documents", ["kb_id"])
    op.create_table(
        "ingestion_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kb_id", sa.Integer, sa.ForeignKey("knowledge_bases.id"), nullable=False),
        sa.Column(
            "document_id", sa.Integer, sa.ForeignKey("knowledge_documents.id"), nullable=False
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("blob_path", sa.Text, nullable=True),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunks_done", sa.Integer, nullable=False, server_default="0"),
        *_timestamps(),
    )
    op.create_index("ix_ingestion_jobs_kb_id", "ingestion_jobs", ["kb_id"])
    op.create_index("ix_ingestion_jobs_document_id", "ingestion_jobs", ["document_id"])
    op.create_index("ix_ingestion_jobs_state", "ingestion_jobs", ["state"])


def downgrade() -> None:
    op.drop_table("ingestion_jobs")
    op.drop_table("knowledge_documents")
    op.drop_table("knowledge_bases")
