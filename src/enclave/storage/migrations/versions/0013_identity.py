"""People: users from the identity provider, keys owned by a user with a role, and
browser sessions signed in with the provider (their sealed tokens).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("groups_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("groups_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("issuer", "subject", name="users_issuer_subject"),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("role", sa.String(16), nullable=True))
        batch.create_foreign_key("api_keys_user_id_fkey", "users", ["user_id"], ["id"])
        batch.create_index("ix_api_keys_user_id", ["user_id"])
    with op.batch_alter_table("ui_sessions") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tokens", sa.Text, nullable=True))
        batch.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_foreign_key("ui_sessions_user_id_fkey", "users", ["user_id"], ["id"])
        batch.create_index("ix_ui_sessions_user_id", ["user_id"])


def downgrade() -> None:
    with op.batch_alter_table("ui_sessions") as batch:
        batch.drop_index("ix_ui_sessions_user_id")
        batch.drop_constraint("ui_sessions_user_id_fkey", type_="foreignkey")
        batch.drop_column("checked_at")
        batch.drop_column("tokens")
        batch.drop_column("user_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_user_id")
        batch.drop_constraint("api_keys_user_id_fkey", type_="foreignkey")
        batch.drop_column("role")
        batch.drop_column("user_id")
    op.drop_table("users")
