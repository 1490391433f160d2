"""The one way in and out of storage: edit rows in a database and their neuron tensors as blobs.

The database is SQLite in the data dir (the default), or PostgreSQL when EDITSERVE_DATABASE_URL names
one; the same models and migrations serve both. The blobs are files in the data dir's blob dir either
way: replicas that share a PostgreSQL database must share that directory too (e.g. a network volume).

Every write puts the blob on disk (durably) before the row that names it is committed, and removes
a blob it wrote if that commit fails, so a failing request leaves storage as it found it. A blob
that no row names (left by a crash between the two steps) is an orphan, removed at start. The
caches that make a start fast (the pack of blobs, the prompts' scope vectors) are in caches.py.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import secrets
import time
from pathlib import Path

import torch
from sqlalchemy import Engine, create_engine, func, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from storage import caches, changes
from storage.blobs import SUFFIX, BlobStore
from storage.models import ACTIVE, CORRUPT, WITHDRAWN, EditorState, EditRecord, EditVersion, prompt_key, utcnow

log = logging.getLogger(__name__)

DB_FILE = "editserve.db"
BLOB_DIR = "blobs"
PACK_FILE, SCOPE_FILE = caches.PACK_FILE, caches.SCOPE_FILE


# Schemes EDITSERVE_DATABASE_URL may use; PostgreSQL always goes through psycopg 3.
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")


def database_url(data_dir: Path | str, url: str | None = None) -> str:
    """The SQLAlchemy URL of the edit store: `url` (EDITSERVE_DATABASE_URL) if given, else the SQLite
    file in the data dir."""
    if url:
        return normalise_database_url(url)
    return f"sqlite:///{Path(data_dir).expanduser().resolve() / DB_FILE}"


def normalise_database_url(url: str) -> str:
    """A postgresql:// (or postgres://) URL with psycopg 3 as its driver; sqlite URLs as they are.
    Anything else is a ValueError naming the scheme only (the URL may hold a password)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's message would repeat the URL
        raise ValueError("not a database URL; expected postgresql://user:password@host:port/database") from exc
    if parsed.drivername in POSTGRES_SCHEMES:
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.drivername in SQLITE_SCHEMES:
        return url
    raise ValueError(
        f"unsupported database scheme {parsed.drivername!r}; expected postgresql:// or postgresql+psycopg:// "
        "(or sqlite:///path)"
    )


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


CONNECT_TIMEOUT_S = 2  # libpq's smallest useful value


def make_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        # Requests run on a thread pool; the service serialises writes, SQLite serialises the rest.
        return create_engine(url, connect_args={"check_same_thread": False})
    # A server-side database outlives our connections (restarts, idle timeouts): test before use. A
    # server that does not answer is given up on soon, so a request fails fast instead of hanging.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


def _unmatchable(*texts: str | None) -> bool:
    """A NUL in a query text: nothing stored holds one (the service refuses them), and PostgreSQL
    refuses the query itself, so it is answered as matching nothing without asking either database."""
    return any(t is not None and "\x00" in t for t in texts)


def _blob_name(stem: str) -> str:
    # A fresh name per write: the blob a committed row names is never overwritten in place.
    return f"{stem}.{secrets.token_hex(4)}{SUFFIX}"


class Repository:
    def __init__(self, data_dir: Path | str, url: str | None = None):
        """Rows in the database at `url` (EDITSERVE_DATABASE_URL; None: SQLite in `data_dir`), blobs
        and the caches (pack, scope vectors) in `data_dir` either way."""
        self.data_dir = Path(data_dir).expanduser()
        self.url = database_url(self.data_dir, url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.blobs = BlobStore(self.data_dir / BLOB_DIR)

    def close(self) -> None:
        self.engine.dispose()

    # -- reads -------------------------------------------------------------------------------------
    def get(self, edit_id: str) -> EditRecord | None:
        if _unmatchable(edit_id):
            return None
        with self.sessions() as s:
            return s.get(EditRecord, edit_id)

    def list(
        self,
        status: str | None = None,
        method: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        search: str | None = None,
        created_by: str | None = None,
    ) -> tuple[builtins.list[EditRecord], int]:
        """A page of edits, oldest first, and how many match in all. `search`: a part of the prompt,
        target or subject, in any case."""
        if _unmatchable(status, method, search, created_by):
            return [], 0
        query = select(EditRecord)
        if created_by is not None:
            query = query.where(EditRecord.created_by == created_by)
        if search:
            query = query.where(
                or_(
                    EditRecord.prompt.icontains(search, autoescape=True),
                    EditRecord.target.icontains(search, autoescape=True),
                    EditRecord.subject.icontains(search, autoescape=True),
                )
            )
        if status is not None:
            query = query.where(EditRecord.status == status)
        if method is not None:
            query = query.where(EditRecord.method == method)
        with self.sessions() as s:
            count = s.scalar(select(func.count()).select_from(query.subquery()))
            page = query.order_by(EditRecord.created_at, EditRecord.id).offset(offset).limit(limit)
            return list(s.scalars(page)), count or 0

    def with_prompt(self, method: str | None, prompt: str, status: str) -> builtins.list[EditRecord]:
        """Edits with this exact prompt and status, of one method or (None) of any."""
        if _unmatchable(method, prompt, status):
            return []
        query = select(EditRecord).where(EditRecord.prompt == prompt, EditRecord.status == status)
        if method is not None:
            query = query.where(EditRecord.method == method)
        with self.sessions() as s:
            return list(s.scalars(query))

    def read_tensors(self, record: EditRecord) -> dict[str, torch.Tensor]:
        return self.blobs.read(record.blob)

    _LIGHT = (
        EditRecord.id,
        EditRecord.method,
        EditRecord.status,
        EditRecord.blob,
        EditRecord.prompt,
        EditRecord.target,
        EditRecord.subject,
        EditRecord.aliases,
        EditRecord.error,
        EditRecord.withdrawn_at,
        EditRecord.created_at,
    )

    def to_load(self) -> builtins.list:
        """The edits a starting server puts back in its editors: active and withdrawn, oldest first.
        Light rows (id, method, status, blob, prompt, target, subject, aliases, error, withdrawn_at,
        created_at),
        not ORM objects: a start may read 10,000."""
        query = (
            select(*self._LIGHT)
            .where(EditRecord.status.in_((ACTIVE, WITHDRAWN)))
            .order_by(EditRecord.created_at, EditRecord.id)
        )
        with self.sessions() as s:
            return list(s.execute(query))

    def light(self, edit_ids: builtins.list[str]) -> dict[str, object]:
        """The light rows (as to_load's) of these edits, by id."""
        if not edit_ids:
            return {}
        with self.sessions() as s:
            return {r.id: r for r in s.execute(select(*self._LIGHT).where(EditRecord.id.in_(edit_ids)))}

    # -- the edit log (storage/changes.py) -----------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Other servers may share this database (PostgreSQL): follow its log, take its lock."""
        return changes.is_postgres(self.engine)

    def ping(self) -> None:
        """Raises (SQLAlchemy's error) when the database cannot be reached now."""
        with self.engine.connect() as con:
            con.execute(select(1))

    def change_lock(self) -> contextlib.AbstractContextManager:
        return changes.change_lock(self.engine)

    def log_head(self) -> int:
        with self.sessions() as s:
            return changes.head(s)

    def log_since(self, seq: int) -> builtins.list[tuple[int, str]]:
        with self.sessions() as s:
            return changes.since(s, seq)

    def read_many(self, records: builtins.list) -> tuple[dict[str, dict[str, torch.Tensor] | Exception], int]:
        """Each record's tensors (or the exception reading its blob raised), taken from the pack where
        it holds the record's current blob; also how many had to be read from their own blob."""
        pack = self._read_pack()
        out: dict[str, dict[str, torch.Tensor] | Exception] = {}
        misses = 0
        for record in records:
            tensors: dict[str, torch.Tensor] | Exception | None = pack.get(record.blob)
            if tensors is not None and not self.blobs.path(record.blob).exists():
                # the pack is a copy: an edit whose blob is gone is corrupt, as without a pack
                tensors = FileNotFoundError(f"blob {record.blob} is missing")
            elif tensors is None:
                misses += 1
                try:
                    tensors = self.blobs.read(record.blob)
                except Exception as exc:  # noqa: BLE001 - the caller decides what a bad blob means
                    tensors = exc
            assert tensors is not None
            out[record.id] = tensors
        return out, misses

    def write_pack(self, records: builtins.list, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Replace the pack with these records' tensors (record id -> tensors)."""
        caches.write_pack(self.data_dir, records, tensors)

    def _read_pack(self) -> dict[str, dict[str, torch.Tensor]]:
        return caches.read_pack(self.data_dir)

    def read_scope_vectors(self, fingerprint: str) -> dict[str, torch.Tensor]:
        """The scope model's embeddings of edit prompts (prompt -> vector), if made by this model."""
        return caches.read_scope_vectors(self.data_dir, fingerprint)

    def write_scope_vectors(self, fingerprint: str, vectors: dict[str, torch.Tensor]) -> None:
        caches.write_scope_vectors(self.data_dir, fingerprint, vectors)

    # -- writes ------------------------------------------------------------------------------------
    def create(
        self,
        *,
        edit_id: str,
        method: str,
        prompt: str,
        target: str,
        retrofit: bool,
        neurons: int,
        tensors: dict[str, torch.Tensor],
        subject: str | None = None,
        aliases: builtins.list[str] | None = None,
        actor: str | None = None,
    ) -> EditRecord:
        now = utcnow()
        record = EditRecord(
            created_by=actor,
            updated_by=actor,
            id=edit_id,
            method=method,
            prompt=prompt,
            prompt_key=prompt_key(prompt),
            target=target,
            subject=subject,
            aliases=aliases or None,
            retrofit=retrofit,
            status=ACTIVE,
            neurons=neurons,
            blob=_blob_name(edit_id),
            created_at=now,
            updated_at=now,
        )
        self.blobs.write(record.blob, tensors)
        try:
            with self.sessions.begin() as s:
                s.add(record)
                changes.append(s, edit_id, "insert")
        except BaseException:
            self.blobs.delete(record.blob)
            raise
        return record

    def retrain(
        self,
        edit_id: str,
        *,
        prompt: str,
        target: str,
        neurons: int,
        tensors: dict[str, torch.Tensor],
        aliases: builtins.list[str] | None = None,
        actor: str | None = None,
    ) -> EditRecord:
        """New prompt/target/aliases and neurons for an edit (it becomes active again if it was corrupt);
        the version it replaces goes to the edit's history in the same transaction. `aliases` None: as
        they were."""
        blob = _blob_name(edit_id)
        self.blobs.write(blob, tensors)
        try:
            with self.sessions.begin() as s:
                record = _row(s, edit_id)
                old_blob, now = record.blob, utcnow()
                earlier = s.scalar(select(func.count()).where(EditVersion.edit_id == edit_id)) or 0
                s.add(
                    EditVersion(
                        edit_id=edit_id,
                        version=earlier + 1,
                        prompt=record.prompt,
                        target=record.target,
                        aliases=record.aliases,
                        made_by=record.updated_by,
                        made_at=record.updated_at,
                        replaced_by=actor,
                        replaced_at=now,
                    )
                )
                record.prompt, record.target, record.neurons, record.blob = prompt, target, neurons, blob
                if aliases is not None:
                    record.aliases = aliases or None
                record.prompt_key = prompt_key(prompt)
                record.status, record.error, record.updated_at, record.updated_by = ACTIVE, None, now, actor
                s.flush()  # the row first: a second active edit of the prompt fails here, not in the log
                changes.append(s, edit_id, "update")
        except BaseException:
            self.blobs.delete(blob)
            raise
        self.blobs.delete(old_blob)  # if this fails the old blob is an orphan, removed at next start
        return record

    def withdraw(self, edit_id: str, actor: str | None = None) -> EditRecord:
        # The blob stays with the record, for audit.
        with self.sessions.begin() as s:
            record = _row(s, edit_id)
            record.status, record.withdrawn_at, record.withdrawn_by = WITHDRAWN, utcnow(), actor
            changes.append(s, edit_id, "withdraw")
        return record

    def history(self, edit_id: str) -> builtins.list[EditVersion]:
        """The edit's earlier versions, oldest first."""
        with self.sessions() as s:
            query = select(EditVersion).where(EditVersion.edit_id == edit_id).order_by(EditVersion.version)
            return list(s.scalars(query))

    def note_error(self, edit_id: str, error: str) -> None:
        """Record why an edit's tensors are no longer usable, leaving its status as it is."""
        with self.sessions.begin() as s:
            _row(s, edit_id).error = error

    def mark_corrupt(self, edit_id: str, error: str) -> EditRecord:
        with self.sessions.begin() as s:
            record = _row(s, edit_id)
            record.status, record.error = CORRUPT, error
            changes.append(s, edit_id, "corrupt")
        return record

    def remove_orphans(self, min_age_s: float = 0.0) -> builtins.list[str]:
        """Delete files in the blob dir that no row names (crash leftovers, temp files) and that are at
        least `min_age_s` old: where servers share the blob dir, a blob another one is writing has no
        row yet."""
        cutoff = time.time() - min_age_s
        with self.sessions() as s:
            named = set(s.scalars(select(EditRecord.blob))) | set(s.scalars(select(EditorState.blob)))
        orphans = [name for name in self.blobs.names() if name not in named and self._older(name, cutoff)]
        for name in orphans:
            self.blobs.delete(name)
        return orphans

    def _older(self, name: str, cutoff: float) -> bool:
        try:
            return self.blobs.path(name).stat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    # -- per-method state --------------------------------------------------------------------------
    def editor_state(self, method: str) -> EditorState | None:
        with self.sessions() as s:
            return s.get(EditorState, method)

    def read_editor_state(self, state: EditorState) -> dict[str, torch.Tensor]:
        return self.blobs.read(state.blob)

    def save_editor_state(self, method: str, fingerprint: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Create or replace a method's state (replacing happens only when the old blob was lost)."""
        blob = _blob_name(f"state-{method}")
        self.blobs.write(blob, tensors)
        old_blob = None
        try:
            with self.sessions.begin() as s:
                state = s.get(EditorState, method)
                if state is None:
                    s.add(EditorState(method=method, fingerprint=fingerprint, blob=blob))
                else:
                    old_blob = state.blob
                    state.fingerprint, state.blob, state.created_at = fingerprint, blob, utcnow()
        except BaseException:
            self.blobs.delete(blob)
            raise
        if old_blob is not None:
            self.blobs.delete(old_blob)


def _row(session, edit_id: str) -> EditRecord:
    """The edit's row, which the caller knows exists (the service checked it under the change lock)."""
    record = session.get(EditRecord, edit_id)
    if record is None:
        raise LookupError(f"edit {edit_id} not found")
    return record
