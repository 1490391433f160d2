"""`editserve backup` and `editserve restore`: a backup taken while a real server generates and
changes edits restores into a new data dir whose server answers exactly as the original; a backup
that is not whole, or a data dir that already holds edits, is refused before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from evaluation.server import Server
from storage.backup import MANIFEST, BackupError, backup, restore, verify
from storage.repository import BLOB_DIR, DB_FILE

PROBES = ["The capital of France is", "Photosynthesis turns sunlight into", "Backup fact 3: the answer is"]


def editserve(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def state(server: Server) -> tuple[list, list]:
    """Every edit as the API lists it, and the answers to the probes."""
    edits = server.call("GET", "/edits?limit=1000")["data"]
    answers = [server.generate(p, 6)["text"] for p in PROBES]
    return sorted(edits, key=lambda e: e["id"]), answers


class Busy(threading.Thread):
    """Generates, and updates one edit back and forth, until told to stop: the backup runs meanwhile."""

    def __init__(self, server: Server, edit_id: str):
        super().__init__(daemon=True)
        self.server, self.edit_id, self.stop, self.errors, self.changes = server, edit_id, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            status, _ = self.server.request("POST", "/generate", {"prompt": PROBES[0], "max_new_tokens": 4})
            target = f"moving{self.changes % 2}"
            changed, body = self.server.request("PUT", f"/edits/{self.edit_id}", {"target": target})
            if status != 200 or changed != 200:
                self.errors.append((status, changed, body))
            self.changes += 1


@pytest.mark.integration
def test_a_backup_taken_while_serving_restores_to_the_same_answers(tmp_path, tiny_env):
    env = {**os.environ, **tiny_env}
    original, restored = tmp_path / "data", tmp_path / "restored"
    with Server(original, tiny_env) as server:
        ids = [
            server.call("POST", "/edits", {"prompt": f"Backup fact {i}: the answer is", "target": f"value{i}"})["id"]
            for i in range(8)
        ]
        server.call("PUT", f"/edits/{ids[1]}", {"target": "updated1"})
        server.call("DELETE", f"/edits/{ids[2]}")
        busy = Busy(server, ids[4])
        busy.start()
        try:
            made = editserve("backup", str(tmp_path / "bk"), "--data-dir", str(original), env=env)
        finally:
            busy.stop.set()
            busy.join(60)
        assert made.returncode == 0, made.stderr
        assert busy.changes >= 1 and not busy.errors, busy.errors
        server.call("PUT", f"/edits/{ids[4]}", {"target": "settled"})  # after the backup: not in it
        before_edits, _ = state(server)
    manifest = json.loads((tmp_path / "bk" / MANIFEST).read_text())
    assert manifest["edits"] == 8 and "8 edits" in made.stdout and "pack.safetensors" in manifest["files"]
    assert (
        DB_FILE in manifest["files"]
        and sum(f.startswith(BLOB_DIR + "/") for f in manifest["files"]) == manifest["blobs"]
    )

    done = editserve("restore", str(tmp_path / "bk"), "--data-dir", str(restored), env=env)
    assert done.returncode == 0, done.stderr
    with Server(restored, tiny_env) as copy:
        got_edits, got_answers = state(copy)
        at_backup = copy.call("GET", f"/edits/{ids[4]}")["target"]
    assert at_backup in ("moving0", "moving1")  # one whole version from during the backup
    # the restored server read its edits from the backup's pack, not blob by blob
    assert "loaded 7 active edits (0 blobs read one by one)" in (tmp_path / "restored.server.log").read_text()
    # The original, set back to what the backup holds, answers as the copy, word for word.
    with Server(original, tiny_env) as server:
        server.call("PUT", f"/edits/{ids[4]}", {"target": at_backup})
        want_edits, want_answers = state(server)
    # Only the updates made to set the original back differ: their time and their author (none).
    assert [{k: v for k, v in e.items() if k != "updated_at"} for e in got_edits] == [
        {k: v for k, v in e.items() if k != "updated_at"} for e in want_edits
    ]
    assert [e["id"] for e in got_edits] == [e["id"] for e in before_edits]
    assert got_answers == want_answers
    by_id = {e["id"]: e for e in got_edits}
    assert (by_id[ids[1]]["status"], by_id[ids[1]]["target"]) == ("active", "updated1")
    assert (by_id[ids[2]]["status"], by_id[ids[2]]["target"]) == ("withdrawn", "value2")
    assert editserve("restore", str(tmp_path / "bk"), "--data-dir", str(restored), env=env).returncode != 0


def test_refusals_leave_everything_as_it_was(tmp_path):
    import sqlite3

    data = tmp_path / "data"
    (data / BLOB_DIR).mkdir(parents=True)
    with pytest.raises(BackupError, match="holds no editserve.db"):
        backup(data, tmp_path / "bk")
    with sqlite3.connect(data / DB_FILE) as con:  # the tables a backup reads, as the migrations make them
        con.executescript(
            "CREATE TABLE edits (id TEXT, blob TEXT); CREATE TABLE editor_states (blob TEXT);"
            "CREATE TABLE alembic_version (version_num TEXT);"
            "INSERT INTO edits VALUES ('a', 'a.safetensors'); INSERT INTO alembic_version VALUES ('0005');"
        )
    con.close()
    (data / BLOB_DIR / "a.safetensors").write_bytes(b"tensor bytes")
    (data / BLOB_DIR / "orphan.safetensors").write_bytes(b"named by no row")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("something")
    with pytest.raises(BackupError, match="not empty"):
        backup(data, tmp_path / "full")

    manifest = backup(data, tmp_path / "bk")
    assert (manifest["edits"], manifest["blobs"], manifest["schema_revision"]) == (1, 1, "0005")
    assert sorted(manifest["files"]) == [f"{BLOB_DIR}/a.safetensors", DB_FILE]  # the orphan stays behind
    assert verify(tmp_path / "bk") == manifest

    with pytest.raises(BackupError, match="already holds edits"):
        restore(tmp_path / "bk", data)
    (tmp_path / "bk" / BLOB_DIR / "a.safetensors").write_bytes(b"tensor bytez")  # same size, other bytes
    target = tmp_path / "new"
    with pytest.raises(BackupError, match="a.safetensors is missing or not the file"):
        restore(tmp_path / "bk", target)
    assert not target.exists()
    with pytest.raises(BackupError, match="not a backup"):
        restore(tmp_path / "full", target)


def test_a_blob_replaced_during_the_backup_is_taken_from_a_newer_snapshot(tmp_path, monkeypatch):
    """An update commits between the snapshot and the copy of the blob it replaces (and deletes it):
    the backup takes a newer snapshot and copies the new blob, and holds no blob its database lacks."""
    import shutil
    import sqlite3

    import storage.backup as bk

    data = tmp_path / "data"
    (data / BLOB_DIR).mkdir(parents=True)
    with sqlite3.connect(data / DB_FILE) as con:
        con.executescript(
            "CREATE TABLE edits (id TEXT, blob TEXT); CREATE TABLE editor_states (blob TEXT);"
            "CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('0005');"
            "INSERT INTO edits VALUES ('a', 'a1.safetensors'), ('b', 'b1.safetensors');"
        )
    con.close()
    for name in ("a1", "b1"):
        (data / BLOB_DIR / f"{name}.safetensors").write_bytes(name.encode())
    real_copy = shutil.copyfile

    def copy_while_b_is_updated(src, dst):
        if str(src).endswith("b1.safetensors") and not (data / BLOB_DIR / "b2.safetensors").exists():
            (data / BLOB_DIR / "b2.safetensors").write_bytes(b"b2")  # the update: new blob, row, old gone
            with sqlite3.connect(data / DB_FILE) as c:
                c.execute("UPDATE edits SET blob = 'b2.safetensors' WHERE id = 'b'")
            c.close()
            (data / BLOB_DIR / "b1.safetensors").unlink()
        return real_copy(src, dst)

    monkeypatch.setattr(bk.shutil, "copyfile", copy_while_b_is_updated)
    manifest = backup(data, tmp_path / "bk")
    assert sorted(manifest["files"]) == [f"{BLOB_DIR}/a1.safetensors", f"{BLOB_DIR}/b2.safetensors", DB_FILE]
    with sqlite3.connect(tmp_path / "bk" / DB_FILE) as con:
        assert sorted(con.execute("SELECT blob FROM edits")) == [("a1.safetensors",), ("b2.safetensors",)]
    con.close()
