"""Apply the Alembic migrations programmatically (the server does this at every start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from storage.changes import change_lock

# The migrations ship inside this package (package data), so any install of it can migrate.
SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate to `revision`. Servers starting together on one PostgreSQL database take turns (the
    change lock), so no migration runs twice at once."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with change_lock(engine):
            command.upgrade(alembic_config(database_url), revision)
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
