"""The layering the import contract (pyproject.toml, `make lint`) states, seen from a fresh interpreter:
the client loads no part of the server, and its schemas agree with the store."""

import subprocess
import sys


def test_the_client_loads_neither_the_server_nor_its_dependencies():
    heavy = ("sqlalchemy", "torch", "transformers", "fastapi", "app", "editors", "storage")
    code = f"import sys, editserve.client, editserve.schemas\nprint(','.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_the_schemas_statuses_are_the_stores():
    from typing import get_args

    from editserve.schemas import Status
    from storage.models import STATUSES

    assert get_args(Status) == STATUSES
