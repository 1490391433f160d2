"""The Alembic migrations build exactly the schema the models describe, and undo it."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from storage import migrate
from storage.models import Base
from storage.repository import database_url


def test_one_head_and_it_is_reachable():
    scripts = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(scripts.get_heads()) == 1


def test_upgrade_matches_the_models_and_is_idempotent(tmp_path):
    url = database_url(tmp_path)
    migrate.upgrade(url)
    migrate.upgrade(url)  # every server start does this
    engine = create_engine(url)
    with engine.connect() as con:
        diff = compare_metadata(MigrationContext.configure(con), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(con).get_current_revision() is not None
    engine.dispose()


def test_downgrade_removes_the_schema(tmp_path):
    url = database_url(tmp_path)
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
