"""The edit log and the one-change-at-a-time lock that servers sharing a database rely on.

Every change of an edit appends a log entry in the transaction that changes the row, so the log holds
exactly the committed changes. On PostgreSQL the same transaction NOTIFYs the entry's number on
CHANNEL (delivered at commit), and every change is made holding a session advisory lock: one change at
a time across all servers, so a server applies every earlier entry before it makes its own, entry
numbers follow commit order, and all servers apply the log in one order. If a server dies holding the
lock, its connection closes and PostgreSQL releases it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage.models import LogEntry

CHANNEL = "editserve_edits"
LOCK_KEY = 0x6564697473657276  # "editserv": the advisory lock every change takes


def is_postgres(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "postgresql"


def append(session: Session, edit_id: str, action: str) -> None:
    """Log a change in the session that makes it (and announce it when that session commits)."""
    entry = LogEntry(edit_id=edit_id, action=action)
    session.add(entry)
    session.flush()
    if is_postgres(session.get_bind()):
        session.execute(text("SELECT pg_notify(:channel, :seq)"), {"channel": CHANNEL, "seq": str(entry.seq)})


@contextlib.contextmanager
def change_lock(engine: Engine) -> Iterator[None]:
    """Held around a whole change (apply the log, change the model, commit). Within one server the
    service's own lock serialises changes; on PostgreSQL this serialises them across servers."""
    if not is_postgres(engine):
        yield
        return
    with engine.connect() as con:
        con.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        con.commit()
        try:
            yield
        finally:
            try:
                con.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                con.commit()
            except DBAPIError:
                # The database went away after the change committed (or failed): its session, and
                # with it the lock, is gone; the change's own outcome stands. The connection is
                # thrown away, so a lock it might still hold goes with it.
                con.invalidate()


def head(session: Session) -> int:
    """The number of the newest entry (0: none)."""
    return int(session.scalar(select(func.coalesce(func.max(LogEntry.seq), 0))) or 0)


def since(session: Session, seq: int, limit: int = 10_000) -> list[tuple[int, str]]:
    """(number, edit id) of the entries after `seq`, oldest first."""
    query = select(LogEntry.seq, LogEntry.edit_id).where(LogEntry.seq > seq).order_by(LogEntry.seq).limit(limit)
    return [(int(n), edit_id) for n, edit_id in session.execute(query)]
