"""The edit store on a real PostgreSQL server (evaluation/postgres.py, one per session, a fresh database per
test): the URL setting, the migrations, the repository, and the app with EDITSERVE_DATABASE_URL across
restarts, including a conflicting edit the store refuses. Skipped, saying why, where PostgreSQL is absent."""

from datetime import UTC

import psycopg
import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import create_engine, inspect
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from storage import migrate
from storage.models import Base
from storage.repository import DB_FILE, Repository, database_url, make_engine, safe_url
from tests.api.helpers import OTHER_PROMPT, OTHER_TARGET, PROMPT, TARGET, assert_error, create, generate, listing, stop
from tests.test_storage import tensors

HEAD_TABLES = {"alembic_version", "edits", "editor_states", "edit_versions", "edit_log"}


# -- the setting ---------------------------------------------------------------------------------------------
def test_without_a_url_the_store_is_the_sqlite_file_in_the_data_dir(tmp_path):
    assert Settings(_env_file=None).database_url is None
    assert Settings(_env_file=None, database_url="").database_url is None
    assert database_url(tmp_path) == database_url(tmp_path, None) == f"sqlite:///{tmp_path.resolve() / DB_FILE}"
    engine = make_engine(database_url(tmp_path))
    assert engine.dialect.name == "sqlite"
    engine.dispose()


@pytest.mark.parametrize(
    "given, expected",
    [
        ("postgresql://u:p@db:5432/edits", "postgresql+psycopg://u:p@db:5432/edits"),
        ("postgres://u@db/edits", "postgresql+psycopg://u@db/edits"),
        (
            "postgresql+psycopg://u:p%40ss@db/edits?sslmode=require",
            "postgresql+psycopg://u:p%40ss@db/edits?sslmode=require",
        ),
    ],
)
def test_a_postgres_url_goes_through_psycopg_3(tmp_path, given, expected):
    assert database_url(tmp_path, given) == expected
    assert Settings(_env_file=None, database_url=given).database_url == expected


def test_another_database_is_refused_without_showing_the_password():
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, database_url="mysql://admin:hunter2@db/edits")
    assert "mysql" in str(caught.value) and "hunter2" not in str(caught.value)
    assert safe_url("postgresql+psycopg://admin:hunter2@db/edits") == "postgresql+psycopg://admin:***@db/edits"


# -- migrations ----------------------------------------------------------------------------------------------
def revisions() -> list[str]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [s.revision for s in reversed(list(scripts.walk_revisions()))]


def tables(url: str) -> set[str]:
    engine = create_engine(database_url(None, url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_builds_the_models_schema_and_is_idempotent(postgres_url):
    url = database_url(None, postgres_url)
    migrate.upgrade(url)
    migrate.upgrade(url)  # every server start does this
    engine = create_engine(url)
    with engine.connect() as con:
        assert compare_metadata(MigrationContext.configure(con), Base.metadata) == []
        assert MigrationContext.configure(con).get_current_revision() == revisions()[-1]
    engine.dispose()
    assert tables(postgres_url) == HEAD_TABLES


def test_each_migration_downgrades_and_upgrades_again_keeping_rows(postgres_url):
    url = database_url(None, postgres_url)
    migrate.upgrade(url, revisions()[0])
    with psycopg.connect(postgres_url) as con:  # a row made before the later migrations alter its table
        con.execute(
            "INSERT INTO edits (id, method, prompt, target, retrofit, status, neurons, blob, created_at, updated_at) "
            "VALUES ('e1', 'ireva', 'p', 't', false, 'active', 1, 'e1.b', now(), now())"
        )
    migrate.upgrade(url)
    with psycopg.connect(postgres_url) as con:
        row = con.execute("SELECT prompt, subject, created_by FROM edits WHERE id = 'e1'").fetchone()
    assert row == ("p", None, None)

    for older in reversed([None, *revisions()[:-1]]):
        migrate.downgrade(url, older or "base")
        engine = create_engine(url)
        with engine.connect() as con:
            assert MigrationContext.configure(con).get_current_revision() == older
        engine.dispose()
    assert tables(postgres_url) <= {"alembic_version"}

    migrate.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as con:
        assert compare_metadata(MigrationContext.configure(con), Base.metadata) == []
    engine.dispose()


# -- the repository ------------------------------------------------------------------------------------------
@pytest.fixture
def repo(tmp_path, postgres_url):
    migrate.upgrade(database_url(tmp_path, postgres_url))
    repository = Repository(tmp_path, postgres_url)
    yield repository
    repository.close()


def add(repo, edit_id: str, prompt: str = "p", seed: int = 0, **fields):
    args = dict(
        edit_id=edit_id, method="ireva", prompt=prompt, target="t", retrofit=False, neurons=2, tensors=tensors(seed)
    )
    return repo.create(**(args | fields))


def test_repository_round_trip_on_postgres(repo, tmp_path):
    assert repo.engine.dialect.name == "postgresql" and repo.engine.dialect.driver == "psycopg"
    first = add(repo, "e0", prompt="The capital of France is", subject="France", actor="alice")
    for i in range(1, 4):
        add(repo, f"e{i}", prompt=f"p{i}", method="serac" if i == 3 else "ireva")

    got = repo.get("e0")
    assert (got.method, got.prompt, got.subject, got.status, got.created_by) == (
        "ireva", "The capital of France is", "France", "active", "alice"
    )  # fmt: skip
    assert got.created_at == got.updated_at and got.created_at.tzinfo == UTC and got.retrofit is False
    assert torch.equal(repo.read_tensors(got)["keys"], tensors()["keys"])
    assert repo.get("nope") is None

    records, count = repo.list()
    assert count == 4 and [r.id for r in records] == ["e0", "e1", "e2", "e3"]
    assert [r.id for r in repo.list(limit=2, offset=1)[0]] == ["e1", "e2"]
    assert [r.id for r in repo.list(method="serac")[0]] == ["e3"]
    assert [r.id for r in repo.list(search="FRANCE")[0]] == ["e0"]  # any case, prompt or subject
    assert repo.list(search="100%_")[1] == 0  # LIKE's wildcards are escaped
    assert [r.id for r in repo.list(created_by="alice")[0]] == ["e0"]
    assert [r.id for r in repo.with_prompt(None, "p1", "active")] == ["e1"]
    # PostgreSQL refuses a NUL in any text; nothing stored holds one, so such queries find nothing
    assert (
        repo.get("e0\x00") is None
        and repo.list(search="\x00") == ([], 0)
        and repo.with_prompt(None, "\x00", "active") == []
    )

    second = repo.retrain("e0", prompt="The capital of Italy is", target="Rome", neurons=3, tensors=tensors(1))
    third = repo.retrain("e0", prompt="The capital of Italy is", target="Roma", neurons=3, tensors=tensors(2))
    assert repo.blobs.path(third.blob).exists() and not repo.blobs.path(first.blob).exists()
    history = repo.history("e0")
    assert [(v.version, v.target) for v in history] == [(1, "t"), (2, "Rome")] and second.blob != third.blob
    assert all(v.made_at.tzinfo == UTC and v.replaced_at >= v.made_at for v in history)

    repo.withdraw("e1", actor="bob")
    repo.mark_corrupt("e2", "blob gone")
    assert [r.id for r in repo.list(status="active")[0]] == ["e0", "e3"]
    withdrawn = repo.get("e1")
    assert withdrawn.status == "withdrawn" and withdrawn.withdrawn_by == "bob" and withdrawn.withdrawn_at is not None
    assert (repo.get("e2").status, repo.get("e2").error) == ("corrupt", "blob gone")
    assert [r.id for r in repo.to_load()] == ["e0", "e1", "e3"]

    repo.save_editor_state("ireva", {"model": "m", "layer": 1}, {"centre": torch.ones(8)})
    assert repo.editor_state("ireva").fingerprint == {"model": "m", "layer": 1}  # JSON on PostgreSQL
    (repo.blobs.root / "stray.safetensors").write_bytes(b"x")
    assert repo.remove_orphans() == ["stray.safetensors"]
    assert not (tmp_path / DB_FILE).exists()  # the rows are in PostgreSQL, the blobs in the data dir


def test_a_commit_postgres_refuses_removes_the_blob_it_wrote(repo):
    kept = add(repo, "e1")
    with pytest.raises(IntegrityError):
        add(repo, "e1", prompt="other", seed=1)  # the same primary key
    assert repo.blobs.names() == [kept.blob] and repo.get("e1").prompt == "p"


def test_a_restarted_database_is_reconnected(repo, postgres_url):
    add(repo, "e1")
    name = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as con:
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    assert repo.get("e1").prompt == "p"  # pool_pre_ping replaces the killed connection


def test_a_change_whose_connection_dies_after_it_committed_still_succeeds(repo, postgres_url):
    """PostgreSQL restarting between a change's commit and the release of the change lock: the change
    stands (no error for what was applied), and the lock is free for the next change."""
    from storage import changes

    name = postgres_url.rsplit("/", 1)[1]
    with changes.change_lock(repo.engine):
        add(repo, "e1")
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as con:
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    with changes.change_lock(repo.engine):  # not held by the dead session
        assert repo.get("e1").prompt == "p"


# -- the app ---------------------------------------------------------------------------------------------------
def stored(url: str) -> tuple:
    """Everything the database holds about edits, read past the app."""
    with psycopg.connect(url) as con:
        edits = con.execute("SELECT id, prompt, target, status, blob FROM edits ORDER BY id").fetchall()
        versions = con.execute("SELECT edit_id, version, target FROM edit_versions ORDER BY id").fetchall()
    return edits, versions


def test_the_app_keeps_its_edits_in_postgres_across_restarts(start, settings, postgres_url):
    client = start(database_url=postgres_url)
    baseline = generate(client, PROMPT)
    edit = create(client)
    other = create(client, OTHER_PROMPT, "Sydney")
    assert client.put(f"/edits/{other['id']}", json={"target": OTHER_TARGET}).status_code == 200
    edited = generate(client, PROMPT)
    assert edited["text"].startswith(" " + TARGET) and edited["tokens"][0]["edit_id"] == edit["id"]
    assert listing(client)["count"] == 2
    edits = listing(client)

    # a second active edit on the same prompt: refused, and nothing stored changes
    before, blobs = stored(postgres_url), sorted((settings.data_dir / "blobs").iterdir())
    assert_error(client.post("/edits", json={"prompt": PROMPT, "target": "French"}), 409, edit["id"], "PUT")
    assert_error(client.put(f"/edits/{other['id']}", json={"prompt": PROMPT}), 409, edit["id"])
    assert stored(postgres_url) == before and sorted((settings.data_dir / "blobs").iterdir()) == blobs
    assert generate(client, PROMPT) == edited and listing(client) == edits
    stop(client)
    assert not (settings.data_dir / DB_FILE).exists()

    again = start(database_url=postgres_url)
    assert listing(again) == edits
    assert generate(again, PROMPT) == edited
    history = again.get(f"/edits/{other['id']}/history").json()
    assert [v["target"] for v in history["versions"]] == ["Sydney", OTHER_TARGET]

    r = again.delete(f"/edits/{edit['id']}")
    assert r.status_code == 200 and r.json()["status"] == "withdrawn"
    assert generate(again, PROMPT) == baseline
    stop(again)

    third = start(database_url=postgres_url)
    assert third.get(f"/edits/{edit['id']}").json()["status"] == "withdrawn"
    assert generate(third, PROMPT) == baseline
    assert third.get("/health").json()["edits_active"] == 1
