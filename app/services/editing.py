"""EditingService: the edited model (in memory) and the repository (on disk) changed together.

Every change is one unit of work (`_commit`): under the write lock and the store's change lock, first
apply what other servers changed, then change the model, then store the change; if the store refuses,
the model is put back, so what a generation sees is always what is stored. Start-up and stop live in
app/services/startup.py; how edits act and who answers is the model's business (editors/edited.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.observability import Metrics
from app.services.errors import (
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
    check_aliases,
    check_retrofit,
    check_text,
    invalid_input,
    storage_failed,
)
from app.services.queue import Busy, GenerationQueue
from app.services.replica import LogFollower, catch_up
from editors.backbone import encode_prompt, keeps_text
from editors.edited import EditedModel, Query, Restore
from editors.generation import GREEDY, Sampling
from editors.method import Editor
from editors.text_stream import Answer, Generation, collect
from storage.models import ACTIVE, WITHDRAWN, EditRecord, EditVersion
from storage.repository import Repository

Records = list[EditRecord]  # (inside the class `list` is the method)
Messages = list[dict]
Versions = list[EditVersion]


class EditingService:
    def __init__(self, settings: Settings, model: EditedModel, repo: Repository, metrics: Metrics | None = None):
        self.settings, self.model, self.repo = settings, model, repo
        self.metrics = metrics or Metrics()
        self.queue = GenerationQueue(settings.max_queue, self.metrics)
        self.backbone, self.editors = model.backbone, model.editors
        self.writes = threading.Lock()  # one change at a time, across methods and the store
        self.applied = 0  # the last edit-log entry this server has applied (app/services/replica.py)
        self.follower: LogFollower | None = None
        self.packer: threading.Thread | None = None  # writing a fresh pack after the start (startup.py)
        self.blobs_written = 0  # since start: blobs the pack does not hold
        self.model_id = settings.served_model_name or settings.model.removeprefix("packaged:")
        self.started_at = int(time.time())

    # -- reads -------------------------------------------------------------------------------------
    @property
    def edits_active(self) -> int:
        return len(self.model.live)

    def get(self, edit_id: str) -> EditRecord:
        record = self.repo.get(edit_id)
        if record is None:
            raise NotFound(f"edit {edit_id} not found")
        return record

    def list(self, status=None, limit=100, offset=0, search=None, created_by=None) -> tuple[Records, int]:
        return self.repo.list(status=status, limit=limit, offset=offset, search=search, created_by=created_by)

    def history(self, edit_id: str) -> tuple[EditRecord, Versions]:
        return self.get(edit_id), self.repo.history(edit_id)

    # -- changes -----------------------------------------------------------------------------------
    @contextmanager
    def _change(self):
        """The lock of a change: this server's, the store's (servers sharing it), then their changes."""
        with self.writes, self.repo.change_lock():
            catch_up(self)
            yield

    def _commit(self, action: str, before: Restore | None, apply: Callable, store: Callable, prompt=None):
        """apply() changes the model, store(what apply returned) the repository; a refused store puts
        `before` back. A stored insert or update (`prompt`: its prompt) names its blob in the model and
        frees its prompt of the withdrawn edits' shadows."""
        made = invalid_input(apply)
        try:
            record = store(made)
        except Exception as exc:
            if before is not None:
                self.model.restore(before)
            refused = self._refused(prompt, exc) if prompt is not None else None
            raise refused or storage_failed(action, exc) from exc
        if prompt is not None:
            self.model.stored(record.id, record.blob)
            self.blobs_written += 1
            self.model.drop_shadows(prompt)
        return record

    def insert(self, method, prompt, target, retrofit=False, subject=None, actor=None, aliases=()) -> EditRecord:
        editor = self.method_editor(method)
        check_retrofit(editor, retrofit)
        for field, text in (("prompt", prompt), ("target", target), ("subject", subject)):
            check_text(field, text, stored=True)
        aliases = check_aliases(aliases)
        self.check_length("prompt", prompt)
        self.check_target(target)
        with self._change(), self.metrics.insert_seconds.time():
            self.refuse_duplicate(prompt)
            edit_id = str(uuid.uuid4())
            fields = {"edit_id": edit_id, "method": method, "prompt": prompt, "target": target, "subject": subject}

            def store(tensors):
                neurons = editor.neurons(edit_id)
                return self.repo.create(
                    **fields, retrofit=retrofit, neurons=neurons, tensors=tensors, aliases=list(aliases), actor=actor
                )

            gone = Restore(edit_id, method, prompt, target, None, subject)  # a refused insert leaves nothing
            apply = lambda: self.model.insert(method, edit_id, prompt, target, retrofit, subject, aliases)  # noqa: E731
            return self._commit("insert", gone, apply, store, prompt)

    def update(self, edit_id: str, prompt=None, target=None, actor=None, aliases=None) -> EditRecord:
        """Retrain an edit on a new prompt, target and/or aliases (None: as they are). A corrupt edit is
        rebuilt from its record."""
        with self._change():
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is withdrawn and cannot change; create a new edit instead")
            editor = self.method_editor(record.method)
            prompt = record.prompt if prompt is None else prompt
            target = record.target if target is None else target
            check_text("prompt", prompt, stored=True)
            check_text("target", target, stored=True)
            aliases = None if aliases is None else check_aliases(aliases)
            self.check_length("prompt", prompt)
            self.check_target(target)
            if prompt != record.prompt or record.status != ACTIVE:
                self.refuse_duplicate(prompt)
            before = self.model.snapshot(edit_id, record.method, record.prompt, record.target, *_names(record))

            def store(tensors):
                changed = {"prompt": prompt, "target": target, "tensors": tensors, "actor": actor}
                names = None if aliases is None else list(aliases)
                return self.repo.retrain(edit_id, neurons=editor.neurons(edit_id), aliases=names, **changed)

            apply = lambda: self.model.update(before, prompt, target, record.retrofit, aliases)  # noqa: E731
            return self._commit("update", before, apply, store, prompt)

    def withdraw(self, edit_id: str, actor: str | None = None) -> EditRecord:
        with self._change():
            record = self.get(edit_id)
            if record.status == WITHDRAWN:
                raise Conflict(f"edit {edit_id} is already withdrawn")
            store = lambda _: self.repo.withdraw(edit_id, actor)  # noqa: E731
            if not self.model.is_live(edit_id):  # corrupt, or of a method not served: only the row changes
                return self._commit("withdraw", None, lambda: None, store)
            before = self.model.snapshot(edit_id, record.method, record.prompt, record.target, *_names(record))
            return self._commit("withdraw", before, lambda: self.model.withdraw(edit_id, record.method), store)

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
    def generate(self, query: Query, max_new_tokens: int, edits=True, sampling=GREEDY, stop=()) -> Generation:
        return collect(self.stream(query, max_new_tokens, edits, sampling, stop))

    def stream(
        self, query: Query, max_new_tokens: int, edits: bool = True, sampling: Sampling = GREEDY, stop=()
    ) -> Answer:
        """The answer piece by piece; iterate it in one thread (app/api/streaming.py). 503 when the
        queue of generations waiting for the model is full."""
        try:
            return self.queue.admit(self.model.stream(query, max_new_tokens, edits, sampling, stop))
        except Busy as exc:
            raise Unavailable(str(exc)) from exc

    def query(self, prompt: str | None, messages: Messages | None) -> Query:
        """A request's prompt, or its chat rendered with the model's chat template; 422 beyond the
        prompt token limit."""
        if prompt is not None:
            query = Query.prompt(prompt)
        else:
            try:
                query = Query.chat(self.backbone.tokenizer, messages or [])
            except ValueError as exc:
                raise Invalid(str(exc)) from exc
        self.check_length("prompt" if prompt is not None else "messages", query.text)
        return query

    def check_target(self, target: str) -> None:
        """422 for a target the tokenizer drops whole: an edit of every method would state nothing."""
        if not keeps_text(self.backbone.tokenizer, target):
            raise Invalid("target: no text the tokenizer keeps")

    def check_length(self, field: str, text: str) -> None:
        check_text(field, text)
        n, limit = len(encode_prompt(self.backbone.tokenizer, text)), self.settings.max_prompt_tokens
        if n == 0:  # control characters alone, which the tokenizer drops: nothing to answer
            raise Invalid(f"{field}: no text the tokenizer keeps")
        if n > limit:
            raise Invalid(f"{field}: {n} tokens, more than the limit of {limit} (EDITSERVE_MAX_PROMPT_TOKENS)")


def _names(record: EditRecord) -> tuple[str | None, tuple[str, ...]]:
    """The edit's subject and aliases, as the scope index holds them."""
    return record.subject, tuple(record.aliases or ())
