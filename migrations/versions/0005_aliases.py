"""An edit's aliases (optional): other names of its subject, which a query may name instead. Kept on
the edit and on each earlier version of it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("edits", "edit_versions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("aliases", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("edits", "edit_versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("aliases")
