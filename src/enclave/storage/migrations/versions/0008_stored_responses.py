"""Stored responses: ``/v1/responses`` answers kept for ``previous_response_id``.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("response_json", sa.Text, nullable=False),
        sa.Column("messages_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_index("ix_stored_responses_key_id", "stored_responses", ["key_id"])
    op.create_index("ix_stored_responses_workspace_id", "stored_responses", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_workspace_id", "stored_responses")
    op.drop_index("ix_stored_responses_key_id", "stored_responses")
    op.drop_table("stored_responses")
