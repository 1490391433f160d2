"""What an editing method is: an `Editor` offering the verbs below, and the `Method` that builds it.

A method lives in one package, `editors/<name>/` (its config, its model, and a `method.py` holding its
`Method`), and is registered once by name in editors/registry.py. Which edit a query is about is not
the method's call: the scope model (editors/scope) decides for every method, and the edit's own method
then answers the query through `reads`, `context` and `steer` (editors/edited.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from editors.backbone import Backbone
from editors.engine import Steering

Tensors = dict[str, torch.Tensor]


class Editor(Protocol):
    name: str
    lock: Any  # an RLock held while the editor changes, and by the server around generation
    supports_retrofit: bool  # insert/update take retrofit=True
    answer_line_only: bool  # an answer from this method to a prompt (not a chat turn) ends with its first line
    # Its steering acts per row on the plain backbone, reading the query itself (no context(), reads()
    # is the identity): its answers join the running batch (editors/batching.py); otherwise they run alone.
    shares_backbone: bool

    # Changes. Errors in the user's input (empty target, too many tokens) raise ValueError naming it.
    def insert(self, edit_id: str, prompt: str, target: str) -> Tensors: ...
    def update(self, edit_id: str, prompt: str, target: str) -> Tensors: ...
    def withdraw(self, edit_id: str) -> None: ...  # stops acting at once; also undoes an insert
    # Restore (edit id, prompt, target, tensors) as stored; returns the edits that failed, with why.
    def load_many(self, items: list[tuple[str, str, str, Tensors]]) -> dict[str, Exception]: ...
    def tensors(self, edit_id: str) -> Tensors: ...  # the edit's state, to persist
    def neurons(self, edit_id: str) -> int: ...  # units that carry the edit
    def state(self) -> Tensors: ...  # what every stored edit depends on; persisted once per data dir
    def close(self) -> None: ...

    # Answers, for a query the scope model put in `edit_id`'s scope.
    # the ids the model reads: `ids` rendered from `query`, the user's message where `chat`
    def reads(self, edit_id: str, ids: list[int], query: str, chat: bool = False) -> list[int]: ...
    def context(self) -> AbstractContextManager: ...  # the model set-up for the whole answer
    # who writes, per row and step; `questions`: per row, the user's question where the row answers a
    # chat turn (None: a plain prompt, continued)
    def steer(self, edit_ids: Sequence[str | None], questions: Sequence[str | None] | None = None) -> Steering: ...


def _nothing(editor: Any) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    # Its settings (a dataclass): the server's Settings get a section of this type under the method's
    # registered name, set with EDITSERVE_<NAME>__<FIELD> (app/core/config.py).
    config: type
    # build(backbone, settings, state): `state` is what `editor.state()` returned on the first start
    # with this data dir (None on that first start). `settings` is the server's Settings; a method
    # reads its own section of it (settings.ireva for iReVa).
    build: Callable[[Backbone, Any, Tensors | None], Editor]
    # The settings the stored edits depend on. A later start with a different fingerprint refuses
    # the data dir rather than serve edits measured against another model or layer.
    fingerprint: Callable[[Backbone, Any], dict]
    # What the harness reports about an editor besides its config (evaluation/edited_system.py).
    describe: Callable[[Any], dict] = _nothing
