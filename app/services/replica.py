"""Servers sharing one PostgreSQL database: each follows the edit log (storage/changes.py) and applies
the changes the others make.

A change is announced by NOTIFY at its commit; the follower LISTENs for it, and also looks at the log
every `poll_s` seconds in case a notification was lost with a connection. A server that starts late,
or whose connection broke, catches up from the last entry it applied: the log holds every committed
change, in order. Applying an entry makes this server's copy of the edit what its row now says
(EditingService.apply_log), so an entry applied twice, or this server's own entry, changes nothing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import make_url

from storage.changes import CHANNEL

log = logging.getLogger(__name__)
RETRY_S = (0.5, 1, 2, 5)  # waits before reconnecting after a failure, the last repeated


class LogFollower:
    def __init__(self, service, poll_s: float = 2.0):
        self.service, self.poll_s = service, poll_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="editserve-follow", daemon=True)
        self.connection: Any = None  # the psycopg connection while following

    def start(self) -> LogFollower:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        connection = self.connection
        if connection is not None:
            try:
                connection.cancel_safe()  # wakes a wait on notifications
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self.thread.join(10)

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                self._follow()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a lost connection: catch up once it is back
                if self.stopping.is_set():
                    return
                wait = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("following the edit log failed (%s); again in %ss", exc, wait)
                self.stopping.wait(wait)

    def _follow(self) -> None:
        import psycopg

        url = make_url(self.service.repo.url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as connection:
            self.connection = connection
            try:
                connection.execute(f"LISTEN {CHANNEL}")
                while not self.stopping.is_set():
                    self.service.apply_log()  # what was committed before LISTEN, and since the last wake
                    for _ in connection.notifies(timeout=self.poll_s, stop_after=1):
                        pass
            finally:
                self.connection = None


def catch_up(service) -> int:
    """Apply the log entries after the last one applied; the caller holds service.writes (and, for a
    change of its own, the change lock). Returns how many edits changed here."""
    if not service.repo.shared:
        return 0  # only this server writes this database: its own changes are applied already
    changed = 0
    while True:
        entries = service.repo.log_since(service.applied)
        if not entries:
            return changed
        last = {edit_id: seq for seq, edit_id in entries}  # an edit changed twice: its row is the newest
        rows = service.repo.light(list(last))
        for edit_id in sorted(last, key=lambda e: last[e]):
            row = rows.get(edit_id)
            if row is not None and row.method in service.editors:
                changed += _apply(service, row)
        service.applied = entries[-1][0]


def _apply(service, row) -> int:
    """Make this server's copy of one edit what its row says; 1 if that changed anything."""
    from editors.edited import Restore
    from storage.models import ACTIVE, WITHDRAWN

    model = service.model
    if row.status == ACTIVE:
        if model.is_live(row.id) and model.version(row.id) == row.blob:
            return 0
        try:
            tensors = service.repo.blobs.read(row.blob)
        except Exception as exc:  # noqa: BLE001 - the writer could read it; say so, the others go on
            log.error(
                "edit %s changed on another server, but its blob %s cannot be read here: %s", row.id, row.blob, exc
            )
            return 0
        restore = Restore(row.id, row.method, row.prompt, row.target, tensors, row.subject, row.blob)
        errors = model.restore(replace(restore, aliases=tuple(row.aliases or ())))
        if errors:
            log.error("edit %s changed on another server, but its tensors do not fit here: %s", row.id, errors[row.id])
            return 1
        model.drop_shadows(row.prompt)
        log.info("applied edit %s (%s) from the edit log", row.id, row.status)
        return 1
    if model.is_live(row.id):
        model.withdraw(row.id, row.method)
        if row.status != WITHDRAWN:  # corrupt on the server that found it so: out of every answer
            model.forget(row.id)
        log.info("applied edit %s (%s) from the edit log", row.id, row.status)
        return 1
    if row.status == WITHDRAWN and row.id not in model.scope:  # made and withdrawn while we were away
        model.remember_withdrawn(row.id, row.method, row.prompt, row.subject, tuple(row.aliases or ()))
        return 1
    return 0
