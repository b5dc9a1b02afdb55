"""Replicas share one database: a locked audit chain head, signed checkpoints in the
database, cluster members with heartbeats, intents owned by a replica, ingestion jobs
with leases, and uploaded files kept in the database.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row (id 1): locked by every replica's audit batch, so appends are serialised.
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        # The signed head (a Checkpoint as JSON) for the newest entry; None before the first.
        sa.Column("signed", sa.Text, nullable=True),
    )
    op.execute("INSERT INTO audit_chain_head (id, signed) VALUES (1, NULL)")
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger, nullable=False, index=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_table(
        "cluster_members",
        sa.Column("replica", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.add_column("audit_intents", sa.Column("replica", sa.String(64), nullable=True))
    op.add_column("ingestion_jobs", sa.Column("leased_by", sa.String(64), nullable=True))
    op.add_column(
        "ingestion_jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "knowledge_blobs",
        sa.Column("job_id", sa.Integer, sa.ForeignKey("ingestion_jobs.id"), primary_key=True),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("knowledge_blobs")
    with op.batch_alter_table("ingestion_jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("leased_by")
    with op.batch_alter_table("audit_intents") as batch:
        batch.drop_column("replica")
    op.drop_table("cluster_members")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_chain_head")
