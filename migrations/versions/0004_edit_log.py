"""The edit log that servers sharing a database follow, and one active edit per prompt, kept by the
database (a unique index on the prompt's digest among active edits).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_ONLY = sa.text("status = 'active'")


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("prompt_key", sa.String(length=64), nullable=True))
    edits = sa.table("edits", sa.column("id", sa.String), sa.column("prompt", sa.Text), sa.column("prompt_key"))
    connection = op.get_bind()
    for edit_id, prompt in connection.execute(sa.select(edits.c.id, edits.c.prompt)).all():
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        connection.execute(edits.update().where(edits.c.id == edit_id).values(prompt_key=digest))
    with op.batch_alter_table("edits") as batch:
        batch.alter_column("prompt_key", existing_type=sa.String(length=64), nullable=False)
        batch.create_index(
            "uq_edits_active_prompt",
            ["prompt_key"],
            unique=True,
            sqlite_where=ACTIVE_ONLY,
            postgresql_where=ACTIVE_ONLY,
        )
    op.create_table(
        "edit_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("edit_id", sa.String(length=36), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("made_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_edit_log_edit_id", "edit_log", ["edit_id"])


def downgrade() -> None:
    op.drop_index("ix_edit_log_edit_id", table_name="edit_log")
    op.drop_table("edit_log")
    with op.batch_alter_table("edits") as batch:
        batch.drop_index("uq_edits_active_prompt")
        batch.drop_column("prompt_key")
