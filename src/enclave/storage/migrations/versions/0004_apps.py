"""Apps: deployed apps, their versions, drafts under test, and pending actions.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _now() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("current_version", sa.Integer, nullable=False),
        _now(),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.UniqueConstraint("workspace_id", "name", name="uq_apps_workspace_name"),
    )
    op.create_index("ix_apps_workspace_id", "apps", ["workspace_id"])
    op.create_table(
        "app_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer, nullable=True),
        _now(),
        sa.Column("test_results_json", sa.Text, nullable=True),
        sa.UniqueConstraint("app_id", "version", name="uq_app_versions_app_version"),
    )
    op.create_index("ix_app_versions_app_id", "app_versions", ["app_id"])
    op.create_table(
        "app_drafts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        _now(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_app_drafts_workspace_id", "app_drafts", ["workspace_id"])
    op.create_index("ix_app_drafts_expires_at", "app_drafts", ["expires_at"])
    op.create_table(
        "app_actions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("app_name", sa.String(64), nullable=False),
        sa.Column("app_ref", sa.String(64), nullable=False),
        sa.Column("api", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(1024), nullable=False),
        sa.Column("arguments_json", sa.Text, nullable=False),
        sa.Column("question", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result_json", sa.Text, nullable=True),
        _now(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_app_actions_workspace_id", "app_actions", ["workspace_id"])
    op.create_index("ix_app_actions_status", "app_actions", ["status"])


def downgrade() -> None:
    op.drop_table("app_actions")
    op.drop_table("app_drafts")
    op.drop_table("app_versions")
    op.drop_table("apps")
