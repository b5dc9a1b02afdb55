"""Documents restricted to groups: a document with rows here is seen only by members.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_document_groups",
        sa.Column(
            "document_id",
            sa.Integer,
            sa.ForeignKey("knowledge_documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("group_name", sa.String(255), primary_key=True),
    )
    op.create_index("knowledge_document_groups_group", "knowledge_document_groups", ["group_name"])


def downgrade() -> None:
    op.drop_table("knowledge_document_groups")
