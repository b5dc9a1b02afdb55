"""The hash-chained audit log and the usage ledger.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"])
    op.create_table(
        "usage",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("workspace", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_usage_time", "usage", ["time"])
    op.create_index("ix_usage_day", "usage", ["day"])


def downgrade() -> None:
    op.drop_index("ix_usage_day", "usage")
    op.drop_index("ix_usage_time", "usage")
    op.drop_table("usage")
    op.drop_index("ix_audit_log_time", "audit_log")
    op.drop_table("audit_log")
