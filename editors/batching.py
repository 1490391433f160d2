"""Continuous batching: concurrent answers share each decoding step of the backbone.

One engine thread runs the batch. Requests join at the next step: the prompts of those that arrived
meanwhile are run together (one left-padded prefill, each with its edit's steering), then their cached
keys and values are merged into the batch's, left padded to a common length, each row keeping its own
positions. Each step then decodes one token for every row in one forward pass
(editors/engine.py, the step every answer takes), the edits steering per row; a row leaves when it
ends (EOS, its budget, or its reader closed it), and padding no row needs any more is trimmed.

Which edit set an answer sees: the engine holds the model's lock while any row runs, and takes no new
row while someone else waits for the lock (a change of the edits, or an answer that cannot join the
batch). So the running rows finish on the edit set they started with, the change is applied with no
answer in flight, and new rows join after it: every answer sees one edit set from first token to last,
and a change waits at most for the longest running answer, not for the queue.

Only editors that steer the plain backbone per row (`Editor.shares_backbone`) join; the others (SERAC
reads another text, in another model set-up) answer alone, as before.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from editors.engine import Rows
from editors.generation import Chooser, Sampling, Step

if TYPE_CHECKING:
    from editors.method import Editor


class ContendedLock:
    """A reentrant lock that tells its holder whether another thread is waiting for it.

    Once the batch engine runs (`engine` is its thread), any other thread holding the lock computes on
    one CPU thread. libgomp, torch's OpenMP, keeps a team of worker threads for every thread that ever
    computed in parallel, and once the process holds more of them than there are cores it throttles
    every team's spin-wait, so the engine's workers sleep between the many small kernels of a decoding
    step. With 1,000 inserts made on request threads, 16 clients ran at 0.69x the speed without edits
    (`editserve bench serving --edits 1000`, 2 cores); with this rule, 0.99x. The engine waits while
    another thread holds the lock, so it loses nothing."""

    def __init__(self):
        self._lock = threading.RLock()
        self._waiting = 0
        self._count = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self.engine: int | None = None
        self._threads_before: int | None = None

    def __enter__(self) -> ContendedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self._lock.acquire(blocking=False):
            with self._count:
                self._waiting += 1
            try:
                self._lock.acquire()
            finally:
                with self._count:
                    self._waiting -= 1
        self._owner, self._depth = threading.get_ident(), self._depth + 1
        if self._depth == 1 and self.engine is not None and self._owner != self.engine:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(1)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self._threads_before is not None:
                torch.set_num_threads(self._threads_before)  # the process-wide count, for the engine's MKL
                self._threads_before = None
            self._owner = None
        self._lock.release()

    @property
    def contended(self) -> bool:
        return self._waiting > 0

    def held_here(self) -> bool:
        """This thread holds the lock (so an engine thread waiting for it would wait for this one)."""
        return self._owner == threading.get_ident()


class NotBatched(Exception):
    """The request's edit is one whose method answers alone: the caller answers it on its own path."""


_END = object()
JOIN_MANY, JOIN_WAIT = 2, 2  # arrivals are let into a running batch in pairs, or after two steps at most
IDLE_EXIT_S = 30.0  # the engine thread ends when idle this long (a server that stops leaves none behind)


@dataclass
class Row:
    ids: list[int]
    about: str
    budget: int
    sampling: Sampling
    use_edits: bool
    earlier: str = ""  # editors/edited.py Query.earlier
    question: str | None = None  # editors/edited.py Query.question
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False
    # set by the engine
    editor: Editor | None = None
    edit_id: str | None = None
    generated: list[int] = field(default_factory=list)
    chooser: Chooser = field(init=False)

    def __post_init__(self):
        self.chooser = Chooser(self.sampling)


class Batcher:
    """`decide(abouts, earlier)` -> per query a Decision or None, called under `lock` (ScopeIndex.decide);
    `editors` by method name."""

    def __init__(self, backbone, editors: dict, decide: Callable, lock: ContendedLock, max_batch: int = 16):
        self.backbone, self.editors, self.decide, self.lock = backbone, editors, decide, lock
        self.max_batch = max(1, max_batch)
        self.pending: queue.Queue[Row | None] = queue.Queue()  # None: stop
        self.thread: threading.Thread | None = None
        self.start_lock = threading.Lock()
        self.stopping = False
        self.peak_rows = 0  # the most rows one step has decoded (the metrics and the tests read it)
        self.submitted = 0  # rows ever asked for (the tests wait on it)
        self.mixed_joins = 0  # joins whose prompts went with the running rows' step (the tests read it)
        self._steered: tuple[list[Row], list] = ([], [])  # the rows last steered, and their steerings

    # -- the caller's side -------------------------------------------------------------------------
    def steps(
        self, ids, about, budget, sampling, use_edits, earlier: str = "", question: str | None = None
    ) -> Generator[Step, None, None]:
        """The answer's steps as the batch makes them; raises NotBatched before the first step when the
        edit that answers must answer alone. Closing the iterator takes the row out of the batch."""
        row = Row(ids, about, budget, sampling, use_edits, earlier, question)
        self.submitted += 1
        self.pending.put(row)
        self._ensure_running()  # after the put: an engine going idle now sees the row, or is gone
        try:
            while True:
                item = row.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            row.cancelled = True

    def close(self, wait_s: float = 10.0) -> None:
        """Stop the engine thread: the rows in flight are answered first (a server stops after its
        requests), then it ends, so that no thread computes while the process exits."""
        self.stopping = True
        self.pending.put(None)
        with self.start_lock:
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    def _ensure_running(self) -> None:
        with self.start_lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="editserve-batch", daemon=True)
                self.thread.start()

    # -- the engine --------------------------------------------------------------------------------
    def _run(self) -> None:
        self.lock.engine = threading.get_ident()
        backlog: list[Row] = []
        while not self.stopping:
            if not backlog:
                try:
                    row = self.pending.get(timeout=IDLE_EXIT_S)
                except queue.Empty:
                    with self.start_lock:  # a request put now finds no thread and starts one
                        if self.pending.empty():
                            self.thread = None
                            return
                    continue
                if row is None:
                    return
                backlog.append(row)
            while self.lock.contended:  # let whoever waits have the lock first
                time.sleep(0.001)
            with self.lock:
                backlog = self._session(backlog)

    @torch.no_grad()
    def _session(self, backlog: list[Row]) -> list[Row]:
        """Rows join and leave until none is left or someone else waits for the lock; returns the
        requests that arrived but were not admitted."""
        rows: list[Row] = []
        batch = Rows(self.backbone)
        self._steered = ([], [])  # steerings made under another hold of the lock may be stale
        waited = 0  # decode steps the oldest waiting request has waited through
        while True:
            backlog += self._drain()
            waited = waited + 1 if backlog and rows else 0
            # A prefill of its own interrupts every running row, and one of two prompts costs little more
            # than one of one: a running batch lets arrivals gather for up to JOIN_WAIT steps unless
            # JOIN_MANY wait. Where the prompts can go with the rows' step instead, they join at once.
            gathered = bool(backlog) and (
                not rows or len(backlog) >= JOIN_MANY or waited > JOIN_WAIT or self._mixable(rows, batch)
            )
            room = self.max_batch - len(rows)
            mixed = False
            if gathered and room > 0 and not self.lock.contended and self._mergeable(rows):
                waited = 0
                joining, backlog = self._assign(backlog[:room]), backlog[room:]
                mixed = bool(joining) and self._mixable(rows + joining, batch)
                if mixed:  # the prompts go with the running rows' next step: the weights read once
                    rows, batch = self._decode_joining(rows, joining, batch)
                else:
                    rows += self._join(joining, batch)
            if not rows:
                return backlog
            self.peak_rows = max(self.peak_rows, len(rows))
            if not mixed:
                try:
                    self._decode(rows, batch)
                except Exception as exc:
                    for row in rows:
                        row.out.put(exc)
                    rows, batch = [], Rows(self.backbone)
                    continue
            keep = [i for i, r in enumerate(rows) if not self._finished(r)]
            rows = [rows[i] for i in keep]
            batch.keep(keep)

    def _drain(self) -> list[Row]:
        out: list[Row] = []
        while True:
            try:
                row = self.pending.get_nowait()
            except queue.Empty:
                return out
            if row is None:
                self.stopping = True
                return out
            out.append(row)

    def _assign(self, joining: list[Row]) -> list[Row]:
        """Decide each joining row's edit (under the lock, with the edit set the row will see); rows whose
        method answers alone are handed back to their callers."""
        asking = [r for r in joining if r.use_edits and not r.cancelled]
        found = self.decide([r.about for r in asking], [r.earlier for r in asking]) if asking else []
        decisions = dict(zip(map(id, asking), found))
        out = []
        for row in joining:
            if row.cancelled:
                continue
            decision = decisions.get(id(row))
            if decision is not None:
                editor = self.editors[decision.method]
                if not editor.shares_backbone:
                    row.out.put(NotBatched(decision.method))
                    continue
                row.editor, row.edit_id = editor, decision.edit_id
            out.append(row)
        return out

    def _mergeable(self, rows: list[Row]) -> bool:
        # A cache of another kind (sliding windows, say) is not merged: such a model answers one at a time.
        if not hasattr(self, "_plain"):
            self._plain = Rows.mergeable(self.backbone)
        return not rows or self._plain

    def _step(self, rows: list[Row], run):
        """run(steerings) under the locks of the editors present (as a change takes them, after the
        model's lock), with one steering per editor, each over every row (None for the others)."""
        editors = {id(r.editor): r.editor for r in rows if r.editor is not None}.values()
        with contextlib.ExitStack() as held:
            for editor in editors:
                held.enter_context(editor.lock)
            steerings = self._steerings(rows, editors)
            try:
                return run(steerings)
            finally:
                for steering in steerings:
                    steering.close()

    def _steerings(self, rows: list[Row], editors) -> list:
        """The steerings over these rows, made again only when the rows change: the edit set cannot
        change under running rows (the engine holds the model's lock), and a steering is undone after
        each step and set up again by the next."""
        last_rows, last = self._steered
        if len(last_rows) == len(rows) and all(a is b for a, b in zip(last_rows, rows)):
            return last
        steerings = [
            e.steer([r.edit_id if r.editor is e else None for r in rows], [r.question for r in rows]) for e in editors
        ]
        self._steered = (list(rows), steerings)
        return steerings

    def _join(self, joining: list[Row], batch: Rows) -> list[Row]:
        """The joining rows' prompts in one left-padded prefill; each row's first token goes out. The
        rows still running are added to `batch` and returned."""
        if not joining:
            return []
        joined = Rows(self.backbone)
        try:
            logits, writers = self._step(joining, lambda steerings: joined.prefill([r.ids for r in joining], steerings))
        except Exception as exc:
            for row in joining:
                row.out.put(exc)
            return []
        top = logits.max(-1).indices.tolist()  # argmax, in a third of its time
        for i, row in enumerate(joining):
            self._emit(row, logits[i], writers[i], top[i])
        return self._admit(joining, joined, batch)

    def _admit(self, joining: list[Row], joined: Rows, batch: Rows) -> list[Row]:
        """The joining rows that go on after their first token, their cache merged into `batch`."""
        keep = [i for i, r in enumerate(joining) if not self._finished(r)]
        try:
            joined.keep(keep)
            batch.merge(joined)
        except Exception as exc:  # these rows fail; the batch runs on without them
            for i in keep:
                joining[i].out.put(exc)
            return []
        return [joining[i] for i in keep]

    @staticmethod
    def _mixable(rows: list[Row], batch: Rows) -> bool:
        """Whether joining rows may go with the running rows' step: the batch's cache allows it and none of
        these rows has an edit (an edit's neurons act on each row's last position, which a mixed pass
        does not have). Asked of the running rows alone, whether arrivals may join at once."""
        return batch.mixable() and all(r.editor is None for r in rows)

    def _decode_joining(self, rows: list[Row], joining: list[Row], batch: Rows) -> tuple[list[Row], Rows]:
        """The running rows' next tokens and the joining rows' first in one pass; the rows running after,
        and their batch. If the pass fails, every row of both fails and a new batch starts."""
        try:
            logits, joined = batch.decode_joining([r.generated[-1] for r in rows], [r.ids for r in joining])
        except Exception as exc:
            for row in rows + joining:
                row.out.put(exc)
            return [], Rows(self.backbone)
        self.mixed_joins += 1
        top = logits.max(-1).indices.tolist()
        for i, row in enumerate(rows + joining):
            self._emit(row, logits[i], None, top[i])
        return rows + self._admit(joining, joined, batch), batch

    def _decode(self, rows: list[Row], batch: Rows) -> None:
        tokens, generated = [r.generated[-1] for r in rows], [r.generated for r in rows]
        logits, writers = self._step(rows, lambda steerings: batch.decode(tokens, steerings, generated))
        top = logits.max(-1).indices.tolist()  # argmax, in a third of its time
        for i, row in enumerate(rows):
            self._emit(row, logits[i], writers[i], top[i])

    def _emit(self, row: Row, logits: torch.Tensor, writer: str | None, greedy: int) -> None:
        if row.cancelled:
            return
        step = row.chooser(logits, writer, greedy)
        if step.token_id == self.backbone.tokenizer.eos_token_id:
            row.budget = len(row.generated)  # ended
            return
        row.generated.append(step.token_id)
        row.out.put(step)

    def _finished(self, row: Row) -> bool:
        done = row.cancelled or len(row.generated) >= row.budget
        if done and not row.cancelled:
            row.out.put(_END)
        if done:
            row.cancelled = True  # so that it is ended once only
        return done
