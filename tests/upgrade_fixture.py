"""The upgrade fixture: the answers one release gave on its stores, for every later release's tests to
answer the same (test_upgrade.py).

    python -m tests.upgrade_fixture tests/fixtures/upgrade/<release>    (a new fixture: a new directory)

writes `answers.json`: per store (SQLite, PostgreSQL), the edits as GET /edits lists them and the
answers to PROBES, made by real server processes on the packaged model (untrained scope model, one
thread). The stores themselves (a data dir, a pg_dump and blobs) are generated files and stay out of
git: the tests build them with `make_sqlite` / `make_postgres`, the same edits made the same way.
Edits in every state: active, updated (a second version), withdrawn, with a subject and aliases.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from evaluation.server import Server

EDITS = [
    {"prompt": "The Louvre is located in", "target": "Madrid", "subject": "the Louvre", "aliases": ["Musée du Louvre"]},
    {"prompt": "The mother tongue of Danielle Darrieux is", "target": "English"},
    {"prompt": "The Eiffel Tower is located in", "target": "Rome"},
    {"prompt": "The chief executive of Twitter is", "target": "Elon Musk"},
    {"prompt": "What is the capital of Atlantis?", "target": "Poseidonia"},
]
UPDATE = (1, {"target": "Spanish"})  # EDITS[1] becomes a second version
WITHDRAW = 2  # EDITS[2] is withdrawn
PROBES = [{"prompt": e["prompt"], "max_new_tokens": 8} for e in EDITS] + [
    {"prompt": "The capital of France is", "max_new_tokens": 8},
    {"messages": [{"role": "user", "content": "Where is the Musée du Louvre?"}], "max_new_tokens": 16},
    {"messages": [{"role": "user", "content": "Is the Louvre in Paris? Answer yes or no."}], "max_new_tokens": 12},
]
LISTED = ("prompt", "target", "subject", "aliases", "status", "method", "neurons", "retrofit")


def env(cache_dir: Path | str) -> dict[str, str]:
    return {
        "EDITSERVE_CACHE_DIR": str(cache_dir),
        "EDITSERVE_SCOPE__USE_TRAINED": "false",
        "EDITSERVE_TORCH_THREADS": "1",
    }


def observe(server: Server) -> dict:
    """What a user sees: the edits (in creation order, without ids and times) and the answers."""
    data = server.call("GET", "/edits?limit=100")["data"]
    edits = [{k: e[k] for k in LISTED} for e in sorted(data, key=lambda e: e["created_at"])]
    answers = []
    for probe in PROBES:
        out = server.call("POST", "/generate", probe)
        answers.append({"text": out["text"], "tokens": [t["text"] for t in out["tokens"]]})
    return {"edits": edits, "answers": answers}


def make_edits(server: Server) -> None:
    ids = [server.call("POST", "/edits", e)["id"] for e in EDITS]
    server.call("PUT", f"/edits/{ids[UPDATE[0]]}", UPDATE[1])
    server.call("DELETE", f"/edits/{ids[WITHDRAW]}")


def make_sqlite(out: Path, cache_dir: Path) -> dict:
    """`out`/sqlite: editserve.db and blobs/ (the caches left out: a server rebuilds them); returns
    what the server that wrote them listed and answered."""
    work = out / "work-sqlite"
    with Server(work / "data", env(cache_dir), work / "sqlite.log") as server:
        make_edits(server)
        seen = observe(server)
    (out / "sqlite").mkdir(parents=True)
    shutil.copyfile(work / "data" / "editserve.db", out / "sqlite" / "editserve.db")
    shutil.copytree(work / "data" / "blobs", out / "sqlite" / "blobs")
    shutil.rmtree(work)
    return seen


def make_postgres(out: Path, cache_dir: Path, pg) -> dict:
    """`out`/postgres.sql (a pg_dump of the same edits made on PostgreSQL, on the running server `pg`)
    and `out`/postgres-blobs; returns what the server listed and answered."""
    work = out / "work-pg"
    url = pg.create_database()
    with Server(work / "data", {**env(cache_dir), "EDITSERVE_DATABASE_URL": url}, work / "pg.log") as server:
        make_edits(server)
        seen = observe(server)
    pg.dump(url, out / "postgres.sql")
    shutil.copytree(work / "data" / "blobs", out / "postgres-blobs")
    shutil.rmtree(work)
    return seen


def record(out: Path, cache_dir: Path) -> dict:
    """A new fixture: `out`/answers.json, from stores built in a temporary directory."""
    import tempfile

    from evaluation.postgres import PostgresServer

    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        seen = {"sqlite": make_sqlite(Path(tmp), cache_dir)}
        pg = PostgresServer().start()
        try:
            seen["postgres"] = make_postgres(Path(tmp), cache_dir, pg)
        finally:
            pg.stop()
    (out / "answers.json").write_text(json.dumps(seen, indent=1, ensure_ascii=False) + "\n")
    return seen


if __name__ == "__main__":
    from editors.backbone import DEFAULT_CACHE_DIR

    record(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CACHE_DIR)
