"""Stores answer as an earlier release recorded, token for token: each fixture under
tests/fixtures/upgrade/ holds what that release listed and answered (tests/upgrade_fixture.py). The
stores are generated files, kept out of git: they are built here with the fixture's own edits, on
SQLite and on PostgreSQL (dumped, then restored into a fresh database), opened by a real server start
(which migrates them) and compared with the release's record."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from evaluation.server import Server
from storage import migrate
from storage.repository import DB_FILE
from tests.upgrade_fixture import env, make_postgres, make_sqlite, observe

FIXTURES = sorted(p for p in (Path(__file__).parent / "fixtures" / "upgrade").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory, editserve_cache, packaged_model_dir) -> Path:
    out = tmp_path_factory.mktemp("upgrade-store")
    make_sqlite(out, editserve_cache)
    return out / "sqlite"


def rows(db: Path) -> dict[str, list]:
    """Every row of every table, in a stable order."""
    with sqlite3.connect(db) as con:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {n: sorted(map(repr, con.execute(f'SELECT * FROM "{n}"'))) for n in names}
    con.close()
    return out


def revision(db: Path) -> str:
    with sqlite3.connect(db) as con:
        (rev,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    con.close()
    return rev


@pytest.mark.integration
@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_a_sqlite_data_dir_answers_as_the_release_recorded(fixture, tmp_path, editserve_cache, sqlite_store):
    data = tmp_path / "data"
    shutil.copytree(sqlite_store, data)
    with Server(data, env(editserve_cache)) as server:  # its start migrates the data dir
        assert observe(server) == json.loads((fixture / "answers.json").read_text())["sqlite"]


@pytest.mark.integration
@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_migrating_down_to_the_release_and_up_again_keeps_every_row(fixture, tmp_path, sqlite_store):
    db = tmp_path / DB_FILE
    shutil.copyfile(sqlite_store / DB_FILE, db)
    written, url = rows(db), f"sqlite:///{db}"
    migrate.upgrade(url)
    upgraded = rows(db)
    migrate.downgrade(url, revision(sqlite_store / DB_FILE))
    assert rows(db) == written  # the newer migrations' downgrades give back exactly what was there
    migrate.upgrade(url)
    assert rows(db) == upgraded


@pytest.mark.integration
@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.name for p in FIXTURES])
def test_a_postgres_dump_answers_as_the_release_recorded(
    fixture, tmp_path, editserve_cache, packaged_model_dir, postgres_server, postgres_url
):
    store = tmp_path / "store"
    make_postgres(store, editserve_cache, postgres_server)
    postgres_server.load(postgres_url, store / "postgres.sql")
    data = tmp_path / "data"
    shutil.copytree(store / "postgres-blobs", data / "blobs")
    with Server(data, {**env(editserve_cache), "EDITSERVE_DATABASE_URL": postgres_url}) as server:
        assert observe(server) == json.loads((fixture / "answers.json").read_text())["postgres"]


def test_no_fixture_file_is_ignored_by_git():
    """A fixture file that .gitignore hides passes here and is missing from every clone (the blobs
    once were: *.safetensors is ignored everywhere else)."""
    root = Path(__file__).parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(root)) for p in (root / "tests" / "fixtures").rglob("*") if p.is_file()]
    done = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=root, capture_output=True, text=True)
    assert done.stdout.split() == []
