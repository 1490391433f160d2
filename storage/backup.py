"""A whole data dir's state copied out while a server uses it, and copied back into an empty one.

What holds the edits is the SQLite database and the blobs its rows name; the pack and the scope
vectors are caches (storage/caches.py). The pack is made afresh from the copied blobs and the scope
vectors are copied, so that a restored server starts as fast as the original.

The database is read through SQLite's online backup API, which copies one consistent snapshot even
while the server writes. The blobs that snapshot names are then copied. A blob name is never
reused, so a copied blob stays valid. An update deletes the blob it replaced once its row commits,
so a blob may go between the snapshot and its copy. Then a newer snapshot is taken and only what it
names anew is copied, until one snapshot's blobs are all in.

A manifest beside them lists every file with its size and sha256; `restore` checks them all before it
writes anything, and writes into a data dir that holds no edits yet. PostgreSQL databases are backed
up with PostgreSQL's own tools (docs/operations.md); here only their blobs would be ours to copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

from safetensors.torch import load_file

from storage import caches
from storage.repository import BLOB_DIR, DB_FILE, PACK_FILE, SCOPE_FILE

MANIFEST = "manifest.json"
CACHES = (PACK_FILE, SCOPE_FILE)
FORMAT = 1
SNAPSHOTS = 20  # snapshots tried before giving up on a data dir whose blobs keep changing under it


class BackupError(RuntimeError):
    """The backup or restore could not be made; nothing was written where it would be mistaken for one."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _snapshot(source: Path, dest: Path) -> tuple[set[str], int, str | None]:
    """Copy the database at `source` to `dest` (one consistent snapshot); the blobs its rows name,
    its count of edits, and its schema revision."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)  # all pages in one step: one snapshot
        finally:
            out.close()
    finally:
        src.close()
    os.replace(tmp, dest)
    with sqlite3.connect(dest) as con:
        named = {r[0] for r in con.execute("SELECT blob FROM edits UNION SELECT blob FROM editor_states")}
        count = con.execute("SELECT count(*) FROM edits").fetchone()[0]
        revision = con.execute("SELECT version_num FROM alembic_version").fetchone()
    con.close()
    return named, count, revision[0] if revision else None


def _pack(dest: Path, blobs: set[str]) -> None:
    """A pack of every blob the backup holds, made afresh: the data dir's own may be older than its
    blobs (a server writes it when it stops), and a restored server reads the pack, not each blob."""
    tensors = {}
    for name in sorted(blobs):
        try:
            tensors[name] = load_file(str(dest / BLOB_DIR / name))
        except Exception:  # noqa: BLE001 - an unreadable blob is read (and judged) by the server itself
            continue
    if tensors:
        caches.write_pack(dest, [SimpleNamespace(id=name, blob=name) for name in tensors], tensors)


def backup(data_dir: Path | str, dest: Path | str) -> dict:
    """Write a backup of `data_dir` into `dest` (absent or empty); returns its manifest."""
    data_dir, dest = Path(data_dir).expanduser().resolve(), Path(dest).expanduser().resolve()
    db = data_dir / DB_FILE
    if not db.exists():
        raise BackupError(f"{data_dir} holds no {DB_FILE}: not a data dir, or one on PostgreSQL")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: a backup goes into a new directory")
    (dest / BLOB_DIR).mkdir(parents=True, exist_ok=True)
    t0, copied = time.time(), set[str]()
    for _ in range(SNAPSHOTS):
        named, count, revision = _snapshot(db, dest / DB_FILE)
        for name in sorted(named - copied):
            try:
                shutil.copyfile(data_dir / BLOB_DIR / name, dest / BLOB_DIR / name)
                copied.add(name)
            except FileNotFoundError:
                pass  # replaced since the snapshot: the next snapshot names its successor
        if named <= copied:
            break
    else:
        raise BackupError(f"blobs kept changing during {SNAPSHOTS} snapshots; try again when writes are fewer")
    for name in copied - named:  # copied for an earlier snapshot, named by none now
        (dest / BLOB_DIR / name).unlink()
    _pack(dest, named)
    try:  # written whole by a rename: an open file is one whole version
        shutil.copyfile(data_dir / SCOPE_FILE, dest / SCOPE_FILE)
    except FileNotFoundError:
        pass
    _fsync_dir(dest / BLOB_DIR)
    files = {str(p.relative_to(dest)): p for p in sorted(dest.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": str(data_dir),
        "schema_revision": revision,
        "edits": count,
        "blobs": len(named),
        "seconds": round(time.time() - t0, 3),
        "files": {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files.items()},
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(source: Path | str) -> dict:
    """The backup's manifest, once every file it lists is there with its size and sha256."""
    source = Path(source).expanduser().resolve()
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{source} has no readable {MANIFEST}: not a backup ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{source}: backup format {manifest.get('format')!r}, this release reads {FORMAT}")
    for rel, want in manifest["files"].items():
        path = source / rel
        if not path.is_file() or path.stat().st_size != want["bytes"] or _sha256(path) != want["sha256"]:
            raise BackupError(f"{source}: {rel} is missing or not the file the backup wrote")
    return manifest


def restore(source: Path | str, data_dir: Path | str) -> dict:
    """Copy a verified backup into `data_dir`, which must hold no database yet; returns its manifest."""
    source, data_dir = Path(source).expanduser().resolve(), Path(data_dir).expanduser().resolve()
    manifest = verify(source)
    blob_dir = data_dir / BLOB_DIR
    if (data_dir / DB_FILE).exists() or (blob_dir.exists() and any(blob_dir.iterdir())):
        raise BackupError(f"{data_dir} already holds edits: restore into a new data dir")
    blob_dir.mkdir(parents=True, exist_ok=True)
    for rel in manifest["files"]:
        if rel.startswith(BLOB_DIR + "/"):
            shutil.copyfile(source / rel, data_dir / rel)
    _fsync_dir(blob_dir)
    for cache in CACHES:
        if cache in manifest["files"]:
            shutil.copyfile(source / cache, data_dir / cache)
    # The database last, under its name only when whole: a data dir without it holds no edits.
    tmp = data_dir / (DB_FILE + ".restoring")
    shutil.copyfile(source / DB_FILE, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / DB_FILE)
    return manifest
