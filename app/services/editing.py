"""EditingService: persistence, locks and ordering around the edited model.

Routes call this; this changes the model (editors/edited.py, in memory) and the repository (on disk)
together, one change at a time, and puts the model back when the store refuses a change: what a
generation sees is always what is stored. How edits act and who answers is the model's business.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import torch
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.observability import Metrics
from app.services.queue import Busy, GenerationQueue
from app.services.replica import LogFollower, catch_up
from editors.backbone import Backbone, encode_prompt, load_backbone
from editors.edited import EditedModel, Query, Restore
from editors.generation import GREEDY, Generation, Sampling
from editors.registry import METHODS, Editor, Method
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel
from editors.text_stream import End, Piece, collect
from storage.models import ACTIVE, WITHDRAWN, EditRecord
from storage.repository import Repository

log = logging.getLogger(__name__)

PACK_AFTER_MISSES = 64  # blobs read one by one at start before a fresh pack is worth writing
# Where servers share the blob dir, a blob younger than this may be another server's change in flight.
SHARED_ORPHAN_AGE_S = 3600


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


class Unavailable(ServiceError):
    status_code = 503
    headers = {"Retry-After": "1"}


class EditingService:
    def __init__(self, settings: Settings, model: EditedModel, repo: Repository, metrics: Metrics | None = None):
        self.settings, self.model, self.repo = settings, model, repo
        self.metrics = metrics or Metrics()
        self.queue = GenerationQueue(settings.max_queue, self.metrics)
        self.backbone, self.editors = model.backbone, model.editors
        self.live: dict[str, set[str]] = {name: set() for name in model.editors}  # ids live in each editor
        self.blob_of: dict[str, str] = {}  # live edit -> the blob its tensors came from
        self.writes = threading.Lock()  # one change at a time, across methods and the store
        self.applied = 0  # the last edit-log entry this server has applied (app/services/replica.py)
        self.follower: LogFollower | None = None
        self._packer: threading.Thread | None = None
        self._blobs_written = 0  # since start: blobs the pack does not hold
        self.model_id = settings.served_model_name or settings.model.removeprefix("packaged:")
        self.started_at = int(time.time())

    # -- start and stop ----------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: Settings, metrics: Metrics | None = None) -> EditingService:
        """Load the model and the scope model, open every method's editor on this data dir, and load
        the stored edits."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        names = settings.methods or list(METHODS)
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ValueError(f"EDITSERVE_METHODS names unknown methods {unknown}; known: {sorted(METHODS)}")
        device = torch.device(settings.device) if settings.device else None
        backbone = load_backbone(settings.model, settings.cache_dir, device, settings.dtype)
        scope = ScopeIndex(ScopeModel.load(settings.scope, settings.cache_dir, device))
        repo = Repository(settings.data_dir, settings.database_url)
        try:
            editors, state_lost = {}, set()
            with repo.change_lock():  # servers starting together on one database make the state once
                for name in names:
                    editors[name], lost = _open_editor(name, METHODS[name], backbone, settings, repo)
                    if lost:
                        state_lost.add(name)
            service = cls(settings, EditedModel(backbone, editors, scope), repo, metrics)
            service._restore(state_lost)
            if repo.shared:
                service.follower = LogFollower(service, settings.follow_poll_seconds).start()
        except BaseException:
            repo.close()
            raise
        return service

    def _restore(self, state_lost: set[str]) -> None:
        """Put every stored edit back: active ones acting; the withdrawn ones' prompts, so that they
        keep the unedited answer. Tensors come from the pack where it is current; when many had to be
        read blob by blob, a fresh pack is written in the background."""
        self.applied = self.repo.log_head()  # read first: a change committed during the load is applied after
        rows = [r for r in self.repo.to_load() if self._restorable(r, state_lost)]
        active = [r for r in rows if r.status == ACTIVE]
        tensors, misses = self.repo.read_many(active)
        errors = {rid: t for rid, t in tensors.items() if isinstance(t, Exception)}
        withdrawn = [
            (r.id, r.method, r.prompt)
            for r in sorted((r for r in rows if r.status == WITHDRAWN), key=lambda r: r.withdrawn_at or r.created_at)
        ]
        failed, embedded = self.model.load(
            [(r.id, r.method, r.prompt, r.target, tensors[r.id]) for r in active if r.id not in errors],
            withdrawn,
            self.repo.read_scope_vectors(self.model.scope.model.fingerprint),
            {r.id: r.subject for r in rows if r.subject},
        )
        errors.update(failed)
        if embedded >= PACK_AFTER_MISSES:  # embedding 10,000 prompts takes a minute: keep them
            self._write_scope_vectors()
        for record in active:
            exc = errors.get(record.id)
            if exc is not None:
                tensors[record.id] = exc  # kept out of the pack
                self._mark_corrupt(
                    record,
                    f"blob {record.blob} is missing"
                    if isinstance(exc, FileNotFoundError)
                    else f"blob {record.blob} is unreadable: {exc}",
                )
            else:
                self.live[record.method].add(record.id)
                self.blob_of[record.id] = record.blob
        for name in self.repo.remove_orphans(SHARED_ORPHAN_AGE_S if self.repo.shared else 0):
            log.warning("removed orphan blob %s (no edit refers to it)", name)
        if misses >= PACK_AFTER_MISSES:
            self._packer = threading.Thread(
                target=self._write_pack, args=(active, tensors), daemon=True, name="editserve-pack"
            )
            self._packer.start()
        log.info("loaded %d active edits (%d blobs read one by one)", self.edits_active, misses)

    def _restorable(self, record, state_lost: set[str]) -> bool:
        if record.method not in self.editors:
            log.warning("edit %s: method %r is not served (EDITSERVE_METHODS); left as it is", record.id, record.method)
            return False
        if record.method in state_lost:
            why = f"the {record.method} editor state it was made against is lost"
            if record.status == ACTIVE:
                self._mark_corrupt(record, why)
            elif record.error is None:
                self.repo.note_error(record.id, why)
            return False
        return True

    def _write_pack(self, records: list, tensors: dict) -> None:
        try:
            self.repo.write_pack(records, tensors)
        except Exception:  # noqa: BLE001 - the pack only saves time at the next start
            log.exception("writing the pack failed; the next start reads the blobs one by one")

    def _write_scope_vectors(self) -> None:
        try:
            self.repo.write_scope_vectors(self.model.scope.model.fingerprint, self.model.scope.vectors())
        except Exception:  # noqa: BLE001 - the vectors only save time at the next start
            log.exception("saving the scope vectors failed; the next start embeds every prompt")

    def _mark_corrupt(self, record, error: str) -> None:
        log.error(
            "edit %s (%s, prompt %r) is corrupt: %s; its record is kept, PUT /edits/%s rebuilds it",
            record.id,
            record.method,
            record.prompt,
            error,
            record.id,
        )
        self.repo.mark_corrupt(record.id, error)

    def close(self) -> None:
        """Stop: refresh the pack if many blobs changed since start, so the next start stays fast."""
        if self.follower is not None:
            self.follower.stop()
        if self._packer is not None:
            self._packer.join()
        if self._blobs_written >= PACK_AFTER_MISSES:
            records = [r for r in self.repo.to_load() if r.status == ACTIVE]
            self._write_pack(records, self.repo.read_many(records)[0])
            self._write_scope_vectors()
        for editor in self.editors.values():
            editor.close()
        self.repo.close()

    # -- reads -------------------------------------------------------------------------------------
    @property
    def edits_active(self) -> int:
        return sum(len(ids) for ids in self.live.values())

    def get(self, edit_id: str) -> EditRecord:
        record = self.repo.get(edit_id)
        if record is None:
            raise NotFound(f"edit {edit_id} not found")
        return record

    def list(
        self,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        search: str | None = None,
        created_by: str | None = None,
    ) -> tuple[list[EditRecord], int]:
        return self.repo.list(status=status, limit=limit, offset=offset, search=search, created_by=created_by)

    def history(self, edit_id: str) -> tuple[EditRecord, list]:
        record = self.get(edit_id)
        return record, self.repo.history(edit_id)

    # -- changes -----------------------------------------------------------------------------------
    def insert(
        self,
        method: str,
        prompt: str,
        target: str,
        retrofit: bool = False,
        subject: str | None = None,
        actor: str | None = None,
    ) -> EditRecord:
        editor = self.method_editor(method)
        check_retrofit(editor, retrofit)
        for field, text in (("prompt", prompt), ("target", target), ("subject", subject)):
            check_text(field, text, stored=True)
        self.check_length("prompt", prompt)
        with self.writes, self.repo.change_lock(), self.metrics.insert_seconds.time():
            catch_up(self)
            self.refuse_duplicate(prompt)
            edit_id = str(uuid.uuid4())
            tensors = invalid_input(self.model.insert, method, edit_id, prompt, target, retrofit, subject)
            try:
                record = self.repo.create(
                    edit_id=edit_id,
                    method=method,
                    prompt=prompt,
                    target=target,
                    retrofit=retrofit,
                    neurons=editor.neurons(edit_id),
                    tensors=tensors,
                    subject=subject,
                    actor=actor,
                )
            except Exception as exc:
                self.model.restore(Restore(edit_id, method, prompt, target, None, subject))
                raise self._refused(prompt, exc) or _storage_failed("insert", exc) from exc
            self.live[method].add(edit_id)
            self.blob_of[edit_id] = record.blob
            self._blobs_written += 1
            self.model.drop_shadows(prompt)
        return record

    def update(
        self, edit_id: str, prompt: str | None = None, target: str | None = None, actor: str | None = None
    ) -> EditRecord:
        """Retrain an edit on a new prompt and/or target. A corrupt edit is rebuilt from its record."""
        with self.writes, self.repo.change_lock():
            catch_up(self)
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is withdrawn and cannot change; create a new edit instead")
            editor = self.method_editor(record.method)
            prompt = record.prompt if prompt is None else prompt
            target = record.target if target is None else target
            check_text("prompt", prompt, stored=True)
            check_text("target", target, stored=True)
            self.check_length("prompt", prompt)
            if prompt != record.prompt or record.status != ACTIVE:
                self.refuse_duplicate(prompt)
            loaded = edit_id in self.live[record.method]
            before = Restore(
                edit_id,
                record.method,
                record.prompt,
                record.target,
                editor.tensors(edit_id) if loaded else None,
                record.subject,
            )
            tensors = invalid_input(self.model.update, before, prompt, target, record.retrofit)
            try:
                record = self.repo.retrain(
                    edit_id,
                    prompt=prompt,
                    target=target,
                    neurons=editor.neurons(edit_id),
                    tensors=tensors,
                    actor=actor,
                )
            except Exception as exc:
                self.model.restore(before)
                raise self._refused(prompt, exc) or _storage_failed("update", exc) from exc
            self.live[record.method].add(edit_id)
            self.blob_of[edit_id] = record.blob
            self._blobs_written += 1
            self.model.drop_shadows(prompt)
        return record

    def withdraw(self, edit_id: str, actor: str | None = None) -> EditRecord:
        with self.writes, self.repo.change_lock():
            catch_up(self)
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is already withdrawn")
            loaded = record.method in self.editors and edit_id in self.live[record.method]
            if loaded:
                before = Restore(
                    edit_id,
                    record.method,
                    record.prompt,
                    record.target,
                    self.editors[record.method].tensors(edit_id),
                    record.subject,
                )
                self.model.withdraw(edit_id, record.method)
            try:
                record = self.repo.withdraw(edit_id, actor)
            except Exception as exc:
                if loaded:
                    self.model.restore(before)
                raise _storage_failed("withdraw", exc) from exc
            if loaded:
                self.live[record.method].discard(edit_id)
                self.blob_of.pop(edit_id, None)
        return record

    def apply_log(self) -> None:
        """Apply the changes other servers sharing the database have made (the follower calls this)."""
        with self.writes:
            catch_up(self)

    def method_editor(self, method: str) -> Editor:
        editor = self.editors.get(method)
        if editor is None:
            raise Invalid(f"method: unknown method {method!r}; this server has {', '.join(self.editors)}")
        return editor

    def _refused(self, prompt: str, exc: Exception) -> Conflict | None:
        """The database's own refusal of a second active edit on a prompt, as the 409 it is."""
        said = str(getattr(exc, "orig", "")) if isinstance(exc, IntegrityError) else ""  # the database's words
        if "edits.prompt_key" in said or "uq_edits_active_prompt" in said:
            try:
                self.refuse_duplicate(prompt)
            except Conflict as conflict:
                return conflict
            return Conflict("prompt: another active edit already has this prompt")
        return None

    def refuse_duplicate(self, prompt: str) -> None:
        # Two live edits on one prompt would claim the same queries; the user changes an edit with PUT.
        existing = next(iter(self.repo.with_prompt(None, prompt, ACTIVE)), None)
        if existing is not None:
            raise Conflict(
                f"prompt: active {existing.method} edit {existing.id} already has this prompt; "
                f"change it with PUT /edits/{existing.id}"
            )

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self,
        query: Query,
        max_new_tokens: int,
        edits: bool = True,
        sampling: Sampling = GREEDY,
        stop: tuple[str, ...] = (),
    ) -> Generation:
        return collect(self.stream(query, max_new_tokens, edits, sampling, stop))

    def stream(
        self,
        query: Query,
        max_new_tokens: int,
        edits: bool = True,
        sampling: Sampling = GREEDY,
        stop: tuple[str, ...] = (),
    ) -> Iterator[Piece | End]:
        """The answer piece by piece; iterate it in one thread (app/api/streaming.py). 503 when the
        queue of generations waiting for the model is full."""
        try:
            return self.queue.admit(self.model.stream(query, max_new_tokens, edits, sampling, stop))
        except Busy as exc:
            raise Unavailable(str(exc)) from exc

    def query(self, prompt: str | None, messages: list[dict] | None) -> Query:
        """A request's prompt, or its chat rendered with the model's chat template; 422 beyond the
        prompt token limit."""
        if prompt is not None:
            query = Query.prompt(prompt)
        else:
            try:
                query = Query.chat(self.backbone.tokenizer, messages)
            except ValueError as exc:
                raise Invalid(str(exc)) from exc
        self.check_length("prompt" if prompt is not None else "messages", query.text)
        return query

    def check_length(self, field: str, text: str) -> None:
        check_text(field, text)
        n, limit = len(encode_prompt(self.backbone.tokenizer, text)), self.settings.max_prompt_tokens
        if n > limit:
            raise Invalid(f"{field}: {n} tokens, more than the limit of {limit} (EDITSERVE_MAX_PROMPT_TOKENS)")


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


def _open_editor(
    name: str, method: Method, backbone: Backbone, settings: Settings, repo: Repository
) -> tuple[Editor, bool]:
    """Build a method's editor from the state saved on this data dir's first start (saving it now if
    this is that start). Returns the editor and whether saved state was lost."""
    fingerprint = method.fingerprint(backbone, settings)
    saved = repo.editor_state(name)
    if saved is not None and saved.fingerprint != fingerprint:
        if repo.list(method=name, limit=0)[1]:
            raise RuntimeError(
                f"{settings.data_dir} holds {name} edits made with {saved.fingerprint}, but this server runs "
                f"{fingerprint}; they would not fit. Restore those settings or use another EDITSERVE_DATA_DIR."
            )
        saved = None  # no edit depends on the old state: start afresh
    if saved is not None:
        try:
            return method.build(backbone, settings, repo.read_editor_state(saved)), False
        except Exception as exc:
            log.error("%s editor state %s cannot be read (%s); rebuilding it", name, saved.blob, exc)
    editor = method.build(backbone, settings, None)
    repo.save_editor_state(name, fingerprint, editor.state())
    return editor, saved is not None


def check_retrofit(editor: Editor, retrofit: bool) -> None:
    if retrofit and not editor.supports_retrofit:
        raise Invalid(f"retrofit: method {editor.name!r} does not support retrofit")


def invalid_input(change, *args):
    try:
        return change(*args)
    except ValueError as exc:  # the editor's verdict on the user's input; it names the field
        raise Invalid(str(exc)) from exc


def _storage_failed(action: str, exc: Exception) -> StorageFailed:
    log.exception("storing the %s failed; it was undone in memory", action)
    if _disk_full(exc):
        return DiskFull(f"the disk is full: the {action} was not applied ({exc}); free space and retry")
    return StorageFailed(f"storage failed, the {action} was not applied: {type(exc).__name__}: {exc}")


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:  # SQLAlchemy wraps the OSError (or reports SQLite's "database or disk is full")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(exc) or "No space left" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
