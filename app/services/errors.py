"""What the service refuses, as the HTTP status and message a client sees, and the checks that refuse."""

from __future__ import annotations

import errno
import logging

from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; the message is the response's detail."""

    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    status_code = 422


class StorageFailed(ServiceError):
    status_code = 500


class DiskFull(StorageFailed):
    status_code = 507


class DatabaseUnavailable(StorageFailed):
    """The database cannot be reached (PostgreSQL restarting, a lost connection): nothing was
    applied; the client retries. Generation goes on meanwhile, from memory."""

    status_code = 503
    headers = {"Retry-After": "2"}


class Unavailable(ServiceError):
    status_code = 503
    headers = {"Retry-After": "1"}


def check_text(field: str, text: str | None, stored: bool = False) -> None:
    """Text that can be tokenised and stored: valid Unicode, and no NUL in what is kept."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"{field}: not valid Unicode (a lone surrogate at {exc.start})") from exc
    if stored and "\x00" in text:
        raise Invalid(f"{field}: must not contain NUL characters")


MAX_ALIASES = 16  # editserve/schemas.py takes no more either


def check_aliases(aliases) -> tuple[str, ...]:
    """Other names of an edit's subject: each a non-empty text as check_text takes it, at most
    MAX_ALIASES, repeats dropped (first kept)."""
    aliases = tuple(aliases or ())
    if len(aliases) > MAX_ALIASES:
        raise Invalid(f"aliases: at most {MAX_ALIASES}, got {len(aliases)}")
    for alias in aliases:
        if not isinstance(alias, str) or not alias.strip():
            raise Invalid("aliases: each must be a non-empty string")
        check_text("aliases", alias, stored=True)
    return tuple(dict.fromkeys(a.strip() for a in aliases))


def check_retrofit(editor, retrofit: bool) -> None:
    if retrofit and not editor.supports_retrofit:
        raise Invalid(f"retrofit: method {editor.name!r} does not support retrofit")


def invalid_input(change, *args):
    try:
        return change(*args)
    except ValueError as exc:  # the editor's verdict on the user's input; it names the field
        raise Invalid(str(exc)) from exc


def storage_failed(action: str, exc: Exception) -> StorageFailed:
    if _disk_full(exc):
        log.exception("storing the %s failed; it was undone in memory", action)
        return DiskFull(f"the disk is full: the {action} was not applied ({exc}); free space and retry")
    if database_down(exc):
        log.warning("storing the %s failed, the database is unavailable; it was undone in memory: %s", action, exc)
        return DatabaseUnavailable(unavailable_detail(exc, f"the {action} was not applied"))
    log.exception("storing the %s failed; it was undone in memory", action)
    return StorageFailed(f"storage failed, the {action} was not applied: {type(exc).__name__}: {exc}")


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:  # SQLAlchemy wraps the OSError (or reports SQLite's "database or disk is full")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(exc) or "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def database_down(exc: BaseException | None) -> bool:
    """The database could not be reached or went away mid-way (SQLAlchemy's OperationalError and
    InterfaceError: refused or lost connections, a server shutting down, SQLite's locked file)."""
    while exc is not None:
        if isinstance(exc, (OperationalError, InterfaceError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def unavailable_detail(exc: BaseException, what: str) -> str:
    # The driver's first line says why ("connection refused", "shutting down"); the URL is not in it.
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return f"the database is unavailable ({reason}): {what}; retry shortly"
