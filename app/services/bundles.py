"""Edit bundles: every edit as one JSON line, named as EasyEdit's data names them (`prompt`,
`target_new`, `subject`), and the same lines read back in as edits.

An import inserts line by line through the service, so each line is applied whole or not at all,
and reports each line as it is done (created / conflict / invalid / failed), which is its progress.
A `withdrawn` line is inserted then withdrawn, so that an export imported into an empty data dir
answers as the server it came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from app.services import startup
from app.services.editing import EditingService
from app.services.errors import Conflict, ServiceError, StorageFailed
from storage.models import ACTIVE, WITHDRAWN, EditRecord

PAGE = 500


def export_line(record: EditRecord) -> dict:
    def when(t):
        return t.isoformat().replace("+00:00", "Z") if t is not None else None

    return {
        "id": record.id,
        "prompt": record.prompt,
        "target_new": record.target,
        "subject": record.subject,
        "aliases": record.aliases or [],
        "method": record.method,
        "status": record.status,
        "retrofit": record.retrofit,
        "created_at": when(record.created_at),
        "updated_at": when(record.updated_at),
        "withdrawn_at": when(record.withdrawn_at),
        "created_by": record.created_by,
        "withdrawn_by": record.withdrawn_by,
    }


def export_lines(service: EditingService, status: str | None = None) -> Iterator[str]:
    """Every edit (of `status`, if given), oldest first, one JSON line each."""
    offset = 0
    while True:
        page, _ = service.list(status=status, limit=PAGE, offset=offset)
        for record in page:
            yield json.dumps(export_line(record), ensure_ascii=False) + "\n"
        if len(page) < PAGE:
            return
        offset += PAGE


class BundleLine(BaseModel):
    """One line of a bundle; other fields (id, timestamps) are read past: the import makes new edits."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    target_new: str | None = None
    target: str | None = None  # editserve's own name for target_new, accepted too
    subject: str | None = None
    aliases: list[str] = []
    method: str = "ireva"
    status: str = ACTIVE
    retrofit: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _one_target(self):
        target = self.target_new if self.target_new is not None else self.target
        if target is None or not target.strip():
            raise ValueError("target_new: give the new target")
        if self.status not in (ACTIVE, WITHDRAWN):
            raise ValueError(f"status: {ACTIVE} or {WITHDRAWN}, not {self.status!r}")
        self.target_new = target
        return self


def parse(body: bytes, max_lines: int) -> list[dict | str]:
    """A JSON list, or JSON lines (blank lines skipped): per line the object, or why it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body: not UTF-8 ({exc})") from exc
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"body: invalid JSON list ({exc})") from exc
        lines = [item if isinstance(item, dict) else "not a JSON object" for item in items]
    else:
        lines = []
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
                lines.append(item if isinstance(item, dict) else "not a JSON object")
            except json.JSONDecodeError as exc:
                lines.append(f"invalid JSON ({exc.msg})")
    if not lines:
        raise ValueError("body: no edits in it")
    if len(lines) > max_lines:
        raise ValueError(f"body: {len(lines)} edits, more than the limit of {max_lines} per import")
    return lines


def import_lines(service: EditingService, lines: list[dict | str], actor: str | None = None) -> Iterator[dict]:
    """Per line (1-based), its result as it is done; then a summary."""
    counts = {"created": 0, "conflict": 0, "invalid": 0, "failed": 0}
    for number, item in enumerate(lines, start=1):
        result = _one(service, item, actor)
        counts[result["result"]] += 1
        yield {"line": number, **result}
    if service.blobs_written >= startup.PACK_AFTER_MISSES:
        # A large import is written into the start-up caches now, not only when the server stops:
        # a backup taken meanwhile, or a start after a crash, reads them instead of every blob.
        startup.refresh_caches_soon(service)
    yield {"summary": {**counts, "lines": len(lines)}}


def _one(service: EditingService, item: dict | str, actor: str | None) -> dict:
    if isinstance(item, str):
        return {"result": "invalid", "detail": item}
    try:
        line = BundleLine.model_validate(item)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}" for e in exc.errors()]
        return {"result": "invalid", "detail": "; ".join(p.replace("Value error, ", "") for p in problems)}
    try:
        record = service.insert(
            line.method, line.prompt, line.target_new, line.retrofit, line.subject, actor, line.aliases
        )
    except Conflict as exc:
        return {"result": "conflict", "detail": str(exc)}
    except StorageFailed as exc:
        return {"result": "failed", "detail": str(exc)}
    except ServiceError as exc:
        return {"result": "invalid", "detail": str(exc)}
    if line.status == WITHDRAWN:
        try:
            record = service.withdraw(record.id, actor)
        except ServiceError as exc:  # the edit exists, active: say so, so that it can be withdrawn by hand
            return {"result": "failed", "id": record.id, "status": ACTIVE, "detail": f"not withdrawn: {exc}"}
    return {"result": "created", "id": record.id, "status": record.status}
