"""The upgrade fixture: a data dir and a PostgreSQL dump written by one release, with the answers that
release gave, for every later release's tests to open, migrate and answer the same (test_upgrade.py).

    python -m tests.upgrade_fixture tests/fixtures/upgrade/<release>    (a new fixture: a new directory)

Each holds, made by real server processes on the packaged model (untrained scope model, one thread):
- `sqlite/`: editserve.db and blobs/ (the caches are left out: a server rebuilds them);
- `postgres.sql` (pg_dump of the same edits made on PostgreSQL) and `postgres-blobs/`;
- `answers.json`: per store, the edits as GET /edits lists them and the answers to PROBES.
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


def make(out: Path, cache_dir: Path) -> dict:
    from evaluation.postgres import PostgresServer

    out.mkdir(parents=True)
    work = out / "work"
    seen = {}
    with Server(work / "data", env(cache_dir), work / "sqlite.log") as server:
        make_edits(server)
        seen["sqlite"] = observe(server)
    (out / "sqlite").mkdir()
    shutil.copyfile(work / "data" / "editserve.db", out / "sqlite" / "editserve.db")
    shutil.copytree(work / "data" / "blobs", out / "sqlite" / "blobs")
    pg = PostgresServer().start()
    try:
        url = pg.create_database()
        pg_env = {**env(cache_dir), "EDITSERVE_DATABASE_URL": url}
        with Server(work / "pg-data", pg_env, work / "pg.log") as server:
            make_edits(server)
            seen["postgres"] = observe(server)
        pg.dump(url, out / "postgres.sql")
    finally:
        pg.stop()
    shutil.copytree(work / "pg-data" / "blobs", out / "postgres-blobs")
    shutil.rmtree(work)
    (out / "answers.json").write_text(json.dumps(seen, indent=1, ensure_ascii=False) + "\n")
    return seen


if __name__ == "__main__":
    from editors.backbone import DEFAULT_CACHE_DIR

    make(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_CACHE_DIR)
