"""SCIM provisioning: users the identity provider manages (userName, externalId, the rest of
their SCIM resource, a version), and its groups with their members.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("provisioned", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("user_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("scim_json", sa.Text, nullable=True))
        batch.add_column(sa.Column("version", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("users_user_name", ["user_name"], unique=True)
        batch.create_index("users_external_id", ["external_id"])
    op.create_table(
        "scim_groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("display_name", sa.String(255), nullable=False, unique=True),
        sa.Column("external_id", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "scim_group_members",
        sa.Column(
            "group_id",
            sa.Integer,
            sa.ForeignKey("scim_groups.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
    )
    op.create_index("ix_scim_group_members_user_id", "scim_group_members", ["user_id"])


def downgrade() -> None:
    op.drop_table("scim_group_members")
    op.drop_table("scim_groups")
    with op.batch_alter_table("users") as batch:
        batch.drop_index("users_external_id")
        batch.drop_index("users_user_name")
        batch.drop_column("updated_at")
        batch.drop_column("version")
        batch.drop_column("scim_json")
        batch.drop_column("external_id")
        batch.drop_column("user_name")
        batch.drop_column("provisioned")
