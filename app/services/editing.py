"""EditingService: the model, its editors and the edit store, kept in step.

Routes call this; this calls the editors (in memory) and the repository (on disk). Every change is
applied to the editor and the store together, one change at a time, under the editor's lock, and
undone in memory when the store refuses it: what a generation sees is always what is stored.
"""
from __future__ import annotations

import inspect
import logging
import threading
import uuid
from contextlib import ExitStack, nullcontext

import torch

from app.core.config import Settings
from editors.backbone import Backbone, load_backbone
from editors.generation import Generation, generate
from editors.registry import METHODS, Editor, Method
from editors.serac.routing import counterfactual_generate
from storage.models import ACTIVE, WITHDRAWN, EditRecord
from storage.repository import Repository

log = logging.getLogger(__name__)

PACK_AFTER_MISSES = 64  # blobs read one by one at start before a fresh pack is worth writing


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


class EditingService:
    def __init__(self, settings: Settings, backbone: Backbone, editors: dict[str, Editor], repo: Repository):
        self.settings, self.backbone, self.editors, self.repo = settings, backbone, editors, repo
        self.live: dict[str, set[str]] = {name: set() for name in editors}  # ids loaded in each editor
        self._writes = threading.Lock()  # one change at a time, across methods and the store
        self._packer: threading.Thread | None = None
        self._blobs_written = 0  # since start: blobs the pack does not hold

    # -- start and stop ----------------------------------------------------------------------------
    @classmethod
    def start(cls, settings: Settings) -> EditingService:
        """Load the model, open every method's editor on this data dir, and load the stored edits."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        names = settings.methods or list(METHODS)
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            raise ValueError(f"EDITSERVE_METHODS names unknown methods {unknown}; known: {sorted(METHODS)}")
        device = torch.device(settings.device) if settings.device else None
        backbone = load_backbone(settings.model, settings.cache_dir, device)
        repo = Repository(settings.data_dir)
        try:
            editors, state_lost = {}, set()
            for name in names:
                editors[name], lost = _open_editor(name, METHODS[name], backbone, settings, repo)
                if lost:
                    state_lost.add(name)
            service = cls(settings, backbone, editors, repo)
            service._restore(state_lost)
        except BaseException:
            repo.close()
            raise
        return service

    def _restore(self, state_lost: set[str]) -> None:
        """Put every stored edit back in its editor: active ones acting, withdrawn ones as withdrawn
        (an iReVa key keeps its prompts on the unedited answer). Tensors come from the pack where it
        is current; when many had to be read blob by blob, a fresh pack is written in the background."""
        records = _keys_to_load([r for r in self.repo.to_load() if self._restorable(r, state_lost)])
        tensors, misses = self.repo.read_many(records)
        errors = {rid: t for rid, t in tensors.items() if isinstance(t, Exception)}
        for name, editor in self.editors.items():
            errors.update(editor.load_many([(r.id, tensors[r.id], r.status == WITHDRAWN) for r in records
                                            if r.method == name and r.id not in errors]))
        for record in records:
            exc = errors.get(record.id)
            if exc is not None:
                tensors[record.id] = exc  # kept out of the pack
                why = f"blob {record.blob} is missing" if isinstance(exc, FileNotFoundError) else \
                    f"blob {record.blob} is unreadable: {exc}"
                if record.status == WITHDRAWN:  # nothing acts for it anyway; its record stays as it is
                    log.warning("withdrawn edit %s: %s", record.id, why)
                else:
                    self._mark_corrupt(record, why)
            elif record.status == ACTIVE:
                self.live[record.method].add(record.id)
        for name in self.repo.remove_orphans():
            log.warning("removed orphan blob %s (no edit refers to it)", name)
        if misses >= PACK_AFTER_MISSES:
            self._packer = threading.Thread(target=self._write_pack, args=(records, tensors), daemon=True,
                                            name="editserve-pack")
            self._packer.start()
        log.info("loaded %d active edits (%d blobs read one by one)", self.edits_active, misses)

    def _restorable(self, record: EditRecord, state_lost: set[str]) -> bool:
        if record.method not in self.editors:
            log.warning("edit %s: method %r is not served (EDITSERVE_METHODS); left as it is",
                        record.id, record.method)
            return False
        if record.method in state_lost:
            why = f"the {record.method} editor state it was made against is lost"
            if record.status == ACTIVE:
                self._mark_corrupt(record, why)
            elif record.error is None:  # so that no later start loads its key either
                self.repo.note_error(record.id, why)
            return False
        return True

    def _forget_withdrawn(self, method: str, prompt: str) -> None:
        """An active edit now owns this prompt: withdrawn edits' keys for it would only shadow its key
        (a retrofitted key is not the prompt's own input, which a withdrawn key is). Start-up skips
        them as well (_keys_to_load)."""
        for record in self.repo.with_prompt(method, prompt, WITHDRAWN):
            self.editors[method].discard(record.id)

    def _write_pack(self, records: list[EditRecord], tensors: dict) -> None:
        try:
            self.repo.write_pack(records, tensors)
        except Exception:  # noqa: BLE001 - the pack only saves time at the next start
            log.exception("writing the pack failed; the next start reads the blobs one by one")

    def _mark_corrupt(self, record: EditRecord, error: str) -> None:
        log.error("edit %s (%s, prompt %r) is corrupt: %s; its record is kept, PUT /edits/%s rebuilds it",
                  record.id, record.method, record.prompt, error, record.id)
        self.repo.mark_corrupt(record.id, error)

    def close(self) -> None:
        """Stop: refresh the pack if many blobs changed since start, so the next start stays fast."""
        if self._packer is not None:
            self._packer.join()
        if self._blobs_written >= PACK_AFTER_MISSES:
            records = self.repo.to_load()
            self._write_pack(records, self.repo.read_many(records)[0])
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

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> tuple[list[EditRecord], int]:
        return self.repo.list(status=status, limit=limit, offset=offset)

    # -- changes -----------------------------------------------------------------------------------
    def insert(self, method: str, prompt: str, target: str, retrofit: bool = False) -> EditRecord:
        editor = self._editor(method)
        train = _verb(editor, "insert", method, retrofit)
        with self._writes:
            self._refuse_duplicate(method, prompt)
            edit_id = str(uuid.uuid4())
            with editor.lock:
                tensors = _train(train, edit_id, prompt, target, retrofit)
                try:
                    record = self.repo.create(edit_id=edit_id, method=method, prompt=prompt, target=target,
                                              retrofit=retrofit, neurons=editor.neurons(edit_id), tensors=tensors)
                except Exception as exc:
                    editor.discard(edit_id)
                    raise _storage_failed("insert", exc) from exc
            self.live[method].add(edit_id)
            self._blobs_written += 1
            self._forget_withdrawn(method, prompt)
        return record

    def update(self, edit_id: str, prompt: str | None = None, target: str | None = None) -> EditRecord:
        """Retrain an edit on a new prompt and/or target. A corrupt edit is rebuilt from its record."""
        with self._writes:
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is withdrawn and cannot change; create a new edit instead")
            editor = self._editor(record.method)
            prompt = record.prompt if prompt is None else prompt
            target = record.target if target is None else target
            if prompt != record.prompt or record.status != ACTIVE:
                self._refuse_duplicate(record.method, prompt)
            loaded = edit_id in self.live[record.method]
            train = _verb(editor, "update" if loaded else "insert", record.method, record.retrofit)
            with editor.lock:
                old = editor.tensors(edit_id) if loaded else None
                tensors = _train(train, edit_id, prompt, target, record.retrofit)
                try:
                    record = self.repo.retrain(edit_id, prompt=prompt, target=target,
                                               neurons=editor.neurons(edit_id), tensors=tensors)
                except Exception as exc:
                    editor.discard(edit_id)
                    if old is not None:
                        editor.load(edit_id, old)
                    raise _storage_failed("update", exc) from exc
            self.live[record.method].add(edit_id)
            self._blobs_written += 1
            self._forget_withdrawn(record.method, prompt)
        return record

    def withdraw(self, edit_id: str) -> EditRecord:
        with self._writes:
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is already withdrawn")
            editor = self.editors.get(record.method)
            loaded = editor is not None and edit_id in self.live[record.method]
            with editor.lock if loaded else nullcontext():
                old = editor.tensors(edit_id) if loaded else None
                if loaded:
                    editor.withdraw(edit_id)
                try:
                    record = self.repo.withdraw(edit_id)
                except Exception as exc:
                    if loaded:
                        editor.load(edit_id, old)
                    raise _storage_failed("withdraw", exc) from exc
            if loaded:
                self.live[record.method].discard(edit_id)
        return record

    def _editor(self, method: str) -> Editor:
        editor = self.editors.get(method)
        if editor is None:
            raise Invalid(f"method: unknown method {method!r}; this server has {', '.join(self.editors)}")
        return editor

    def _refuse_duplicate(self, method: str, prompt: str) -> None:
        # Two live edits on one prompt would race for the same key; the user changes an edit with PUT.
        existing = next(iter(self.repo.with_prompt(method, prompt, ACTIVE)), None)
        if existing is not None:
            raise Conflict(f"prompt: active {method} edit {existing.id} already has this prompt; "
                           f"change it with PUT /edits/{existing.id}")

    # -- generation --------------------------------------------------------------------------------
    def generate(self, prompt: str, max_new_tokens: int) -> Generation:
        with ExitStack() as locks:  # every editor holds still for the whole generation
            for editor in self.editors.values():
                locks.enter_context(editor.lock)
            adaptor = self.editors.get("ireva")
            # A method that routes prompts (SERAC) answers in-scope prompts from its counterfactual prompt.
            for name, editor in self.editors.items():
                route = getattr(editor, "route", None)
                if route is None or not self.live[name]:
                    continue
                edit_id = route(prompt)
                if edit_id is None:
                    continue
                # SERAC's path: its counterfactual model (adapter inside counterfactual()), iReVa's
                # neurons off, the output cut after the answer line, every token naming the edit.
                return counterfactual_generate(editor, edit_id, prompt, max_new_tokens, ireva=adaptor)
            return generate(self.backbone, adaptor, prompt, max_new_tokens)


def _keys_to_load(records: list) -> list:
    """The rows whose tensors a start loads, matching what the running server held: every active
    edit; of the withdrawn edits with one (method, prompt), none if an active edit has that prompt,
    else only the latest withdrawn (each newer edit of the prompt dropped the older keys when it
    became active); none whose tensors were already unusable (error set) when it was withdrawn."""
    active = {(r.method, r.prompt) for r in records if r.status == ACTIVE}
    withdrawn = [r for r in records if r.status == WITHDRAWN and r.error is None and (r.method, r.prompt) not in active]
    latest = {(r.method, r.prompt): r.id for r in sorted(withdrawn, key=lambda r: r.withdrawn_at or r.created_at)}
    keep = set(latest.values())
    return [r for r in records if r.status == ACTIVE or r.id in keep]


def _open_editor(name: str, method: Method, backbone: Backbone, settings: Settings,
                 repo: Repository) -> tuple[Editor, bool]:
    """Build a method's editor from the state saved on this data dir's first start (saving it now if
    this is that start). Returns the editor and whether saved state was lost."""
    fingerprint = method.fingerprint(backbone, settings)
    saved = repo.editor_state(name)
    if saved is not None and saved.fingerprint != fingerprint:
        if repo.list(method=name, limit=0)[1]:
            raise RuntimeError(
                f"{settings.data_dir} holds {name} edits made with {saved.fingerprint}, but this server runs "
                f"{fingerprint}; they would not fit. Restore those settings or use another EDITSERVE_DATA_DIR.")
        saved = None  # no edit depends on the old state: start afresh
    if saved is not None:
        try:
            return method.build(backbone, settings, repo.read_editor_state(saved)), False
        except Exception as exc:
            log.error("%s editor state %s cannot be read (%s); rebuilding it", name, saved.blob, exc)
    editor = method.build(backbone, settings, None)
    repo.save_editor_state(name, fingerprint, method.state(editor))
    return editor, saved is not None


def _verb(editor: Editor, verb: str, method: str, retrofit: bool):
    fn = getattr(editor, verb)
    if retrofit and "retrofit" not in inspect.signature(fn).parameters:
        raise Invalid(f"retrofit: method {method!r} does not support retrofit")
    return fn


def _train(fn, edit_id: str, prompt: str, target: str, retrofit: bool):
    try:
        if retrofit:
            return fn(edit_id, prompt, target, retrofit=True)
        return fn(edit_id, prompt, target)
    except ValueError as exc:  # the editor's verdict on the user's input; it names the field
        raise Invalid(str(exc)) from exc


def _storage_failed(action: str, exc: Exception) -> StorageFailed:
    log.exception("storing the %s failed; it was undone in memory", action)
    return StorageFailed(f"storage failed, the {action} was not applied: {type(exc).__name__}: {exc}")
