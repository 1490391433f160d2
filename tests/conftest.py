"""Fixtures for the server tests: a tiny randomly initialised Llama saved as a local model directory
(with the real SmolLM2 tokenizer, so text round-trips), and apps on real SQLite files in temp dirs."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from editors.scope.config import ScopeConfig
from storage.repository import BLOB_DIR, DB_FILE
from tests.api.helpers import stop
from tests.tiny_models import packaged_tokenizer, tiny_backbone

torch.set_num_threads(1)  # the test machine is shared


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
def settings(tiny_model_dir, tmp_path) -> Settings:
    # The scope model is the packaged MiniLM, untrained: these tests do not depend on set-up products.
    return Settings(_env_file=None, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache",
                    model=str(tiny_model_dir), device="cpu", torch_threads=1, scope=ScopeConfig(use_trained=False))


@pytest.fixture
def start(settings):
    """start(**setting overrides) -> a TestClient whose app has run its start-up; all stopped at the end."""
    clients = []

    def _start(**overrides) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield _start
    for client in reversed(clients):
        stop(client)


@pytest.fixture
def client(start) -> TestClient:
    return start()


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
            con.execute(f"CREATE TRIGGER {name} BEFORE {statement} ON edits "
                        "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END")
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
