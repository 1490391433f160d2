"""Apply the Alembic migrations programmatically (the server does this at every start)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from storage.changes import change_lock


def script_location() -> Path:
    """The top-level `migrations` folder, found where it is installed (it ships in the wheel, so any
    install can migrate) without importing it: its env.py runs only under Alembic."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed (pip install -e . in the repo root)")
    return Path(list(spec.submodule_search_locations)[0])


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
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
