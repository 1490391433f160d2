"""EditedModel: the backbone, its editors and the scope index, changed and asked in one place.

Every answer takes one path, whoever asks (the server, the evaluation harness, the bench): the scope
model decides which live edit, if any, the query is about; no edit -> the unedited backbone (nothing
fires); edit E -> E's own method answers, reading what it reads (`reads`), in its model set-up
(`context`), with its neurons or its attribution steering each step (`steer`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import cast

import torch

from editors.backbone import Backbone, encode_prompt, encode_target
from editors.batching import Batcher, ContendedLock, NotBatched
from editors.engine import next_tokens
from editors.generation import GREEDY, Sampling, generate_batch, steps
from editors.method import Editor, Tensors
from editors.scope.index import Decision, Entry, ScopeIndex
from editors.scope.sentences import last_named
from editors.text_stream import Answer, Generation, collect, text_pieces


@dataclass(frozen=True)
class Query:
    """What the model reads (`text`) and what the scope model judges (`about`): the same for a plain
    prompt; for a chat, the rendered conversation and the last user message."""

    text: str
    about: str
    earlier: str = ""  # a chat's latest earlier user message naming a subject: what "it" may refer to
    is_chat: bool = False  # a chat turn: the answer is the assistant's, to the question `about`

    @property
    def question(self) -> str | None:
        """The user's question, where the answer is an assistant turn (None: a prompt, continued)."""
        return self.about if self.is_chat else None

    @classmethod
    def prompt(cls, prompt: str) -> Query:
        return cls(prompt, prompt)

    @classmethod
    def chat(cls, tokenizer, messages: list[dict]) -> Query:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("messages: this model has no chat template; send a prompt instead")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise ValueError("messages: there is no user message to answer")
        return cls(text, users[-1], last_named(users[:-1]), is_chat=True)


@dataclass(frozen=True)
class Restore:
    """An edit as it was before a change, to put back if storing the change fails."""

    edit_id: str
    method: str
    prompt: str
    target: str
    tensors: Tensors | None  # None: the edit was not live
    subject: str | None = None
    version: str | None = None  # the stored copy `tensors` came from (Live.version)
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Live:
    """An edit acting in the model: its method, and which stored copy of it acts (the storage's name for
    it; None until stored), so that a server following another's changes can tell a new one."""

    method: str
    version: str | None = None


class EditedModel:
    def __init__(self, backbone: Backbone, editors: dict[str, Editor], scope: ScopeIndex, max_batch: int = 16):
        self.backbone, self.editors, self.scope = backbone, editors, scope
        self.live: dict[str, Live] = {}  # every edit acting now; changed only by the verbs below
        # Held by every change and every answer (the batch's engine holds it while any row runs): an
        # answer sees one edit set from start to end.
        self.lock = ContendedLock()
        self.batcher = Batcher(backbone, editors, scope.decide, self.lock, max_batch)

    def close(self) -> None:
        self.batcher.close()

    # -- the live edits ------------------------------------------------------------------------------
    def is_live(self, edit_id: str) -> bool:
        return edit_id in self.live

    def version(self, edit_id: str) -> str | None:
        live = self.live.get(edit_id)
        return None if live is None else live.version

    def active_by_method(self) -> dict[str, int]:
        counts = dict.fromkeys(self.editors, 0)
        for live in self.live.values():
            counts[live.method] = counts.get(live.method, 0) + 1
        return counts

    def stored(self, edit_id: str, version: str) -> None:
        """The live edit's change is stored, as `version`."""
        self.live[edit_id] = Live(self.live[edit_id].method, version)

    def snapshot(
        self, edit_id: str, method: str, prompt: str, target: str, subject: str | None, aliases: tuple[str, ...] = ()
    ) -> Restore:
        """The edit as it is now, to restore() if a change to it is refused."""
        with self.lock:
            live = self.live.get(edit_id)
            tensors = self.editors[method].tensors(edit_id) if live is not None else None
            version = None if live is None else live.version
            return Restore(edit_id, method, prompt, target, tensors, subject, version, tuple(aliases))

    # -- changes -----------------------------------------------------------------------------------
    def editor(self, method: str) -> Editor:
        return self.editors[method]

    def insert(
        self,
        method: str,
        edit_id: str,
        prompt: str,
        target: str,
        retrofit: bool = False,
        subject: str | None = None,
        aliases: tuple[str, ...] = (),
    ) -> Tensors:
        """`subject`: what the prompt is about, if the user said (it anchors the edit's scope); `aliases`:
        its other names, which a query may name instead."""
        editor = self.editors[method]
        with self.lock, editor.lock:
            tensors = editor.insert(edit_id, prompt, target, **_retrofit(retrofit))
            self.scope.put(edit_id, method, prompt, subject=subject, aliases=aliases, target=target)
            self.live[edit_id] = Live(method)
        return tensors

    def update(
        self, before: Restore, prompt: str, target: str, retrofit: bool = False, aliases: tuple[str, ...] | None = None
    ) -> Tensors:
        """`aliases`: the subject's other names from now on (None: as before)."""
        editor = self.editors[before.method]
        with self.lock, editor.lock:
            if before.tensors is None:  # not live (a corrupt edit being rebuilt): a fresh insert
                tensors = editor.insert(before.edit_id, prompt, target, **_retrofit(retrofit))
            else:
                tensors = editor.update(before.edit_id, prompt, target, **_retrofit(retrofit))
            names = before.aliases if aliases is None else aliases
            self.scope.put(before.edit_id, before.method, prompt, subject=before.subject, aliases=names, target=target)
            self.live[before.edit_id] = Live(before.method)
        return tensors

    def withdraw(self, edit_id: str, method: str) -> None:
        with self.lock, self.editors[method].lock:
            self.editors[method].withdraw(edit_id)
            self.live.pop(edit_id, None)
            if edit_id in self.scope:
                self.scope.retire(edit_id)

    def restore(self, before: Restore) -> dict[str, Exception]:
        """Undo a change the store refused: the edit is as in `before` again (or gone, if it was new).
        Also how an edit another server changed is taken over. Returns load_many's errors: the edit
        whose tensors do not fit is gone instead."""
        editor = self.editors[before.method]
        with self.lock, editor.lock:
            editor.withdraw(before.edit_id)
            self.live.pop(before.edit_id, None)
            errors = {}
            if before.tensors is not None:
                errors = editor.load_many([(before.edit_id, before.prompt, before.target, before.tensors)])
            if before.tensors is None or errors:
                if before.edit_id in self.scope:
                    self.scope.remove(before.edit_id)
                return errors
            self.scope.put(
                before.edit_id,
                before.method,
                before.prompt,
                subject=before.subject,
                aliases=before.aliases,
                target=before.target,
            )
            self.live[before.edit_id] = Live(before.method, before.version)
            return errors

    def forget(self, edit_id: str) -> None:
        """The edit's scope row goes (its editor has let it go already): its prompt is no edit's."""
        with self.lock:
            self.live.pop(edit_id, None)
            if edit_id in self.scope:
                self.scope.remove(edit_id)

    def remember_withdrawn(
        self, edit_id: str, method: str, prompt: str, subject: str | None = None, aliases: tuple[str, ...] = ()
    ) -> None:
        """A withdrawn edit this model never held (another server made and withdrew it): its prompt keeps
        the unedited answer, as load() keeps withdrawn prompts, unless a live edit has that prompt."""
        with self.lock:
            owned = any(e is not None and e.live and e.prompt == prompt for e in self.scope.rows)
            if not owned:
                self.scope.put(edit_id, method, prompt, live=False, subject=subject, aliases=aliases)

    def drop_shadows(self, prompt: str) -> None:
        """A live edit now owns this prompt: withdrawn edits' rows for it would only shadow it."""
        with self.lock:
            for edit_id in self.scope.withdrawn_with_prompt(prompt):
                self.scope.remove(edit_id)

    def load(
        self,
        live: list[tuple[str, str, str, str, Tensors, str | None]],
        withdrawn: list[tuple[str, str, str]],
        known: dict[str, torch.Tensor] | None = None,
        subjects: dict[str, str] | None = None,
        aliases: dict[str, tuple[str, ...]] | None = None,
    ) -> tuple[dict[str, Exception], int]:
        """A start: live edits (id, method, prompt, target, tensors, version) act again; withdrawn ones
        (id, method, prompt), oldest first, keep their prompts on the unedited answer where no live
        edit has the prompt (the newest of each prompt only, as the running server held them).
        `known`: prompts' scope vectors saved by an earlier start; `subjects`, `aliases`: the edits' given
        subjects and their other names.
        Returns the edits that failed to
        load, with why, and how many prompts had to be embedded."""
        errors: dict[str, Exception] = {}
        with self.lock:
            for name, editor in self.editors.items():
                errors.update(editor.load_many([(i, p, t, x) for i, m, p, t, x, _ in live if m == name]))
            loaded = [(i, m, p, t, v) for i, m, p, t, _, v in live if i not in errors]
            self.live.update({i: Live(m, v) for i, m, _, _, v in loaded})
            owned = {p for _, _, p, _, _ in loaded}
            newest = {p: (i, m) for i, m, p in withdrawn if p not in owned}
            subject, names = (subjects or {}).get, aliases or {}
            embedded = self.scope.put_many(
                [Entry(i, m, p, True, subject(i), names.get(i, ()), t) for i, m, p, t, _ in loaded]
                + [Entry(i, m, p, False, subject(i), names.get(i, ())) for p, (i, m) in newest.items()],
                known,
            )
        return errors, embedded

    # -- answers -----------------------------------------------------------------------------------
    def decide(self, queries: list[Query]) -> list[Decision | None]:
        with self.lock:
            return self.scope.decide([q.about for q in queries], [q.earlier for q in queries])

    def stream(
        self,
        query: Query,
        max_new_tokens: int = 16,
        edits: bool = True,
        sampling: Sampling = GREEDY,
        stop: tuple[str, ...] = (),
    ) -> Answer:
        """The answer to one query, piece by piece, then its End; `edits=False` answers as the
        unedited model. Answered in the running batch (editors/batching.py) with whatever else is being
        answered, unless its edit's method answers alone or this thread holds the model's lock (a
        preview): then alone, holding the lock from the first piece to the End."""
        tok = self.backbone.tokenizer
        ids = encode_prompt(tok, query.text)
        if not self.lock.held_here():
            run = self.batcher.steps(ids, query.about, max_new_tokens, sampling, edits, query.earlier, query.question)
            try:
                first = next(run, None)
            except NotBatched:
                pass
            else:
                yield from text_pieces(tok, _prepend(first, run), len(ids), max_new_tokens, stop)
                return
        yield from self._alone(query, ids, max_new_tokens, edits, sampling, stop)

    def _alone(self, query, ids, max_new_tokens, edits, sampling, stop) -> Answer:
        tok = self.backbone.tokenizer
        with self.lock:
            decision = self.scope.decide([query.about], [query.earlier])[0] if edits else None
            if decision is None:
                run = steps(self.backbone, ids, max_new_tokens, sampling=sampling)
                yield from text_pieces(tok, run, len(ids), max_new_tokens, stop)
                return
            editor = self.editors[decision.method]
            with editor.lock, editor.context():
                reads = editor.reads(decision.edit_id, ids, query.about, query.is_chat)
                steering = editor.steer([decision.edit_id], [query.question])
                run = steps(self.backbone, reads, max_new_tokens, steering, sampling=sampling)
                line_only = editor.answer_line_only and not query.is_chat
                yield from text_pieces(tok, run, len(ids), max_new_tokens, stop, line_only)

    def generate(
        self,
        query: Query,
        max_new_tokens: int = 16,
        edits: bool = True,
        sampling: Sampling = GREEDY,
        stop: tuple[str, ...] = (),
    ) -> Generation:
        """The whole answer to one query (greedy unless `sampling` says otherwise)."""
        return collect(self.stream(query, max_new_tokens, edits, sampling, stop))

    def generate_many(
        self, queries: list[Query], budgets: list[int], edits: bool = True, batch_size: int = 16
    ) -> list[Generation]:
        """generate() for many queries, batched by the method that answers them (the harness's path)."""
        tok = self.backbone.tokenizer
        out: list[Generation | None] = [None] * len(queries)
        with self.lock:
            abouts, earlier = [q.about for q in queries], [q.earlier for q in queries]
            decisions = self.scope.decide(abouts, earlier) if edits else [None] * len(queries)
            groups: dict[str | None, list[int]] = {}
            for k, d in enumerate(decisions):
                groups.setdefault(d.method if d is not None else None, []).append(k)
            for method, ks in groups.items():
                editor = self.editors[method] if method is not None else None
                ks = sorted(ks, key=lambda k: len(queries[k].text))  # similar lengths pad less
                for s in range(0, len(ks), batch_size):
                    chunk = ks[s : s + batch_size]
                    ids = [encode_prompt(tok, queries[k].text) for k in chunk]
                    budget = [budgets[k] for k in chunk]
                    if editor is None:
                        got = generate_batch(self.backbone, ids, budget)
                    else:
                        edit_ids = [cast(Decision, decisions[k]).edit_id for k in chunk]  # the group has a method
                        reads = [
                            editor.reads(e, i, queries[k].about, queries[k].is_chat)
                            for e, i, k in zip(edit_ids, ids, chunk)
                        ]
                        with editor.lock, editor.context():
                            steering = editor.steer(edit_ids, [queries[k].question for k in chunk])
                            got = generate_batch(self.backbone, reads, budget, steering)
                    line_only = editor is not None and editor.answer_line_only
                    for k, i, b, made in zip(chunk, ids, budget, got):
                        cut = line_only and not queries[k].is_chat
                        out[k] = collect(text_pieces(tok, (s for s in made), len(i), b, (), cut))
        return cast(list[Generation], out)  # every query's answer is in

    @torch.no_grad()
    def next_tokens(self, query: Query, decision: Decision | None, prefixes: list[list[int]]) -> list[int]:
        """Teacher forcing: the greedy next token after the query followed by each prefix of answer
        tokens, on the path that answers the query (one forward per prefix: an edit acts on the last
        position only). Used by the harness; batched over the prefixes."""
        ids = encode_prompt(self.backbone.tokenizer, query.text)
        with self.lock:
            if decision is None:
                return next_tokens(self.backbone, [ids + p for p in prefixes])
            editor = self.editors[decision.method]
            reads = editor.reads(decision.edit_id, ids, query.about, query.is_chat)
            steering = editor.steer([decision.edit_id] * len(prefixes))
            with editor.lock, editor.context():
                steering.step(prefixes)
                try:
                    return next_tokens(self.backbone, [reads + p for p in prefixes])
                finally:
                    steering.close()

    def target_ids(self, query: Query, target: str) -> list[int]:
        return encode_target(self.backbone.tokenizer, query.text, target)


def _prepend(first, run: Generator) -> Generator:
    try:
        if first is not None:
            yield first
        yield from run
    finally:
        run.close()


def _retrofit(retrofit: bool) -> dict:
    return {"retrofit": True} if retrofit else {}
