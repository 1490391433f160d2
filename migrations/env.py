"""Alembic environment on the storage models' metadata.

The server runs `upgrade head` itself (storage.migrate). From a shell, `alembic upgrade head` in the
repo root migrates EDITSERVE_DATABASE_URL's database, or without it the SQLite file under EDITSERVE_DATA_DIR.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

from storage.models import Base

config = context.config
# Only the alembic command line brings an ini file with logging; the server keeps its own logging.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if not config.get_main_option("sqlalchemy.url"):
    from app.core.config import Settings
    from storage.repository import database_url

    settings = Settings()
    config.set_main_option("sqlalchemy.url", database_url(settings.data_dir, settings.database_url).replace("%", "%%"))

target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as connection:
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead. On PostgreSQL the same
        # batch operations are plain ALTER TABLE statements (nothing is rebuilt).
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
