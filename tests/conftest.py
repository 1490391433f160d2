"""Fixtures for the server tests: a tiny randomly initialised Llama saved as a local model directory
(with the real SmolLM2 tokenizer, so text round-trips), and apps on real SQLite files in temp dirs.

Tests on the real packaged model are marked `integration` (`make test-fast` skips them). What they
need from set-up (the converted model, SERAC's adapter) they get through the fixtures at the end,
which find it where `make` puts it and make it there when it is missing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from editors.scope.config import ScopeConfig
from storage.repository import BLOB_DIR, DB_FILE
from tests.api.helpers import stop, wait_ready
from tests.tiny_models import packaged_tokenizer, tiny_backbone

torch.set_num_threads(1)  # the test machine is shared

# A test that takes one of these starts a server on a port, a browser or a database server: marked
# `service`, so that `make test-unit` (-m "not integration and not service") starts none of them.
SERVICE_FIXTURES = {"live_url", "live_url_factory", "postgres_server", "postgres_url", "fuzz_url", "page"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVICE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Exercises the "any local transformers directory" path of EDITSERVE_MODEL."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = packaged_tokenizer()
    backbone = tiny_backbone("llama", tokenizer, seed=0, layers=2)
    backbone.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_env(tiny_model_dir, tmp_path) -> dict[str, str]:
    """The environment of a real server process on the tiny model (tests/test_faults.py and others)."""
    return {
        "EDITSERVE_MODEL": str(tiny_model_dir),
        "EDITSERVE_CACHE_DIR": str(tmp_path / "cache"),
        "EDITSERVE_SCOPE__USE_TRAINED": "false",
        "EDITSERVE_TORCH_THREADS": "1",
    }


def tiny_settings(model_dir: Path, root: Path) -> Settings:
    """The tiny model, a data dir and cache under `root`. The scope model is the packaged MiniLM,
    untrained: these tests do not depend on set-up products."""
    return Settings(
        _env_file=None,
        data_dir=root / "data",
        cache_dir=root / "cache",
        model=str(model_dir),
        device="cpu",
        torch_threads=1,
        scope=ScopeConfig(use_trained=False),
    )


@pytest.fixture
def settings(tiny_model_dir, tmp_path) -> Settings:
    return tiny_settings(tiny_model_dir, tmp_path)


@pytest.fixture
def start(settings):
    """start(**setting overrides) -> a TestClient whose app has run its start-up; all stopped at the end."""
    clients = []

    def _start(**overrides) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client.app)
        return client

    yield _start
    for client in reversed(clients):
        stop(client)


@pytest.fixture
def client(start) -> TestClient:
    return start()


@contextmanager
def served(app):
    """`app` on a real uvicorn on 127.0.0.1, in a thread of this process (so tests can still reach into
    it), once loaded: yields its URL, stops it after."""
    from evaluation.server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        wait_ready(app)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture
def live_url_factory(settings):
    """live_url_factory(**setting overrides) -> (url, app), served as by `served`; all stopped at the end."""
    with ExitStack() as stack:

        def _serve(**overrides):
            app = create_app(settings.model_copy(update=overrides))
            return stack.enter_context(served(app)), app

        yield _serve


@pytest.fixture
def live_url(live_url_factory):
    return live_url_factory()


@pytest.fixture
def blob_dir(settings) -> Path:
    return settings.data_dir / BLOB_DIR


@pytest.fixture
def fail_writes(settings):
    """fail_writes("INSERT" | "UPDATE") makes every such statement on the edits table fail inside SQLite
    (a trigger, so the real commit path fails), until the test ends or the returned function is called."""
    db = settings.data_dir / DB_FILE
    made = []

    def _fail(statement: str):
        name = f"fail_{statement.lower()}"
        with sqlite3.connect(db) as con:
            con.execute(
                f"CREATE TRIGGER {name} BEFORE {statement} ON edits "
                "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
            )
        made.append(name)

        def undo():
            with sqlite3.connect(db) as con:
                con.execute(f"DROP TRIGGER IF EXISTS {name}")

        return undo

    yield _fail
    if made and db.exists():
        with sqlite3.connect(db) as con:
            for name in made:
                con.execute(f"DROP TRIGGER IF EXISTS {name}")


# -- set-up products, for the integration tests ------------------------------------------------------------
@pytest.fixture(scope="session")
def editserve_cache() -> Path:
    """The cache dir `make` fills (the Makefile's CACHE): the server's, $EDITSERVE_CACHE_DIR or its default."""
    from evaluation.options import server_default

    return Path(server_default("cache_dir")).expanduser()


@pytest.fixture(scope="session")
def packaged_model_dir(editserve_cache) -> Path:
    """The packaged model as float32 safetensors in the cache; converted now (~1 min) if missing."""
    from editors.backbone import DEFAULT_MODEL, resolve_model_dir

    return Path(resolve_model_dir(DEFAULT_MODEL, editserve_cache))


@pytest.fixture(scope="session")
def gemma3_model_dir(editserve_cache) -> Path:
    """The second packaged backbone, Gemma 3 270M, as float32 safetensors in the cache (~1 min if new)."""
    from editors.backbone import GEMMA3, resolve_model_dir

    return Path(resolve_model_dir(GEMMA3, editserve_cache))


@pytest.fixture(scope="session")
def serac_adapter(editserve_cache, packaged_model_dir) -> Path:
    """SERAC's shared adapter for the packaged model, where `make adapter` puts it; trained now with the
    same command if missing (~18 min on one thread; skipped without the train files)."""
    from editors.backbone import DEFAULT_MODEL
    from editors.serac.adapter import has_adapter, shared_adapter_dir
    from evaluation.datasets import data_root

    path = shared_adapter_dir(editserve_cache, DEFAULT_MODEL)
    if not has_adapter(path):
        data = data_root()
        if not (data / "zsre").exists():
            pytest.skip(f"no SERAC adapter at {path} and no train files at {data} to train it")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "train-serac",
                "--shared",
                "--cache-dir",
                str(editserve_cache),
                "--threads",
                "1",
            ],
            check=True,
            env={**os.environ, "EDITSERVE_EVAL_DATA": str(data)},
        )
    assert has_adapter(path)
    return path


@pytest.fixture(scope="session")
def trained_scope(editserve_cache) -> Path:
    """The trained scope model, where `make scope` puts it; trained now with the same command if missing
    (~12 min on one thread; skipped without the train files)."""
    from editors.scope.model import META, default_scope_dir
    from evaluation.datasets import data_root

    path = default_scope_dir(editserve_cache)
    if not (path / META).exists():
        data = data_root()
        if not (data / "pararel").exists():
            pytest.skip(f"no trained scope model at {path} and no train files at {data} to train it")
        command = [sys.executable, "-m", "app.cli", "train-scope", "--cache-dir", str(editserve_cache)]
        subprocess.run([*command, "--threads", "1"], check=True)
    return path


# -- PostgreSQL (evaluation/postgres.py) ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (skips, saying why, where none can run)."""
    from evaluation.postgres import PostgresServer, Unavailable

    try:
        server = PostgresServer()
    except Unavailable as exc:
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
