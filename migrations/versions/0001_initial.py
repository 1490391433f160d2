"""Initial schema: edits and per-method editor state.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "edits",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("retrofit", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("neurons", sa.Integer(), nullable=False),
        sa.Column("blob", sa.String(length=128), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("withdrawn_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_edits_method", "edits", ["method"])
    op.create_index("ix_edits_status", "edits", ["status"])
    op.create_table(
        "editor_states",
        sa.Column("method", sa.String(length=32), primary_key=True),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("blob", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("editor_states")
    op.drop_index("ix_edits_status", table_name="edits")
    op.drop_index("ix_edits_method", table_name="edits")
    op.drop_table("edits")
