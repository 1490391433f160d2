"""SQLAlchemy 2 models. The schema itself is created and changed only by Alembic (migrations/)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE, WITHDRAWN, CORRUPT = "active", "withdrawn", "corrupt"
STATUSES = (ACTIVE, WITHDRAWN, CORRUPT)


def utcnow() -> datetime:
    return datetime.now(UTC)


def prompt_key(prompt: str) -> str:
    """The digest of a prompt, which the database keeps unique among active edits (a prompt itself can
    be longer than an index entry may be)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class UTCDateTime(TypeDecorator):
    """SQLite keeps no time zone: store naive UTC, hand back aware UTC so the API says +00:00."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class EditRecord(Base):
    """One edit: what the user asked for, where its neurons are on disk, and its status history."""

    __tablename__ = "edits"
    # Two active edits on one prompt would claim the same queries: the database refuses the second,
    # whichever server (replica) asks.
    __table_args__ = (
        Index(
            "uq_edits_active_prompt",
            "prompt_key",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    method: Mapped[str] = mapped_column(String(32), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_key: Mapped[str] = mapped_column(String(64))  # prompt_key(prompt)
    target: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text, default=None)  # the entity the prompt is about, if given
    aliases: Mapped[list | None] = mapped_column(JSON, default=None)  # other names of the subject, if given
    retrofit: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), index=True, default=ACTIVE)
    neurons: Mapped[int] = mapped_column(Integer, default=0)
    # File name under the blob dir. A new name on every retrain, so the old blob stays valid until
    # the row that points at the new one is committed.
    blob: Mapped[str] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text, default=None)  # why the edit is corrupt
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The names of the API keys that made, last changed and withdrew the edit (None: no keys configured).
    created_by: Mapped[str | None] = mapped_column(String(128), index=True, default=None)
    updated_by: Mapped[str | None] = mapped_column(String(128), default=None)
    withdrawn_by: Mapped[str | None] = mapped_column(String(128), default=None)


class EditVersion(Base):
    """An earlier prompt/target/aliases of an edit, kept when PUT replaced it: nothing an edit was is lost."""

    __tablename__ = "edit_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    edit_id: Mapped[str] = mapped_column(String(36), ForeignKey("edits.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1 = as first made
    prompt: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    aliases: Mapped[list | None] = mapped_column(JSON, default=None)
    made_by: Mapped[str | None] = mapped_column(String(128), default=None)
    made_at: Mapped[datetime] = mapped_column(UTCDateTime)
    replaced_by: Mapped[str | None] = mapped_column(String(128), default=None)
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EditorState(Base):
    """Per-method state that every stored edit of that method depends on (iReVa: the key centre),
    with the settings it was made under, so a data dir is never reused with a model it does not fit."""

    __tablename__ = "editor_states"

    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    fingerprint: Mapped[dict] = mapped_column(JSON)
    blob: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LogEntry(Base):
    """The edit log: one row per change of an edit, in the order the changes were made. Servers sharing
    a database follow it to apply each other's changes (app/services/replica.py); the row itself is the
    edit's state, this only says that it changed."""

    __tablename__ = "edit_log"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    edit_id: Mapped[str] = mapped_column(String(36), index=True)
    action: Mapped[str] = mapped_column(String(16))  # insert, update, withdraw, corrupt
    made_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
