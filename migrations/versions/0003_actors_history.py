"""Who made and withdrew each edit (the API key's name), and every earlier version of an edit.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("created_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("updated_by", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("withdrawn_by", sa.String(length=128), nullable=True))
        batch.create_index("ix_edits_created_by", ["created_by"])
    op.create_table(
        "edit_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("edit_id", sa.String(length=36), sa.ForeignKey("edits.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("made_by", sa.String(length=128), nullable=True),
        sa.Column("made_at", sa.DateTime(), nullable=False),
        sa.Column("replaced_by", sa.String(length=128), nullable=True),
        sa.Column("replaced_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_edit_versions_edit_id", "edit_versions", ["edit_id"])


def downgrade() -> None:
    op.drop_index("ix_edit_versions_edit_id", table_name="edit_versions")
    op.drop_table("edit_versions")
    with op.batch_alter_table("edits") as batch:
        batch.drop_index("ix_edits_created_by")
        batch.drop_column("withdrawn_by")
        batch.drop_column("updated_by")
        batch.drop_column("created_by")
