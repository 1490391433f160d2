"""Editing methods the server knows, by the name clients use in `POST /edits {"method": ...}`.

A method plugs in by adding a `Method` to METHODS. Its editor must offer the verbs listed in
editors/__init__.py plus `lock` (an RLock held while it changes, and by the server around generation).
An editor that also has `route(prompt) -> edit_id | None` and `counterfactual_prompt(edit_id, query)
-> str` (SERAC) is asked first at generation time: when it routes the prompt to one of its edits, the
server generates from the counterfactual prompt and names that edit for every token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from editors.backbone import Backbone

Tensors = dict[str, torch.Tensor]


class Editor(Protocol):
    lock: Any

    def insert(self, edit_id: str, prompt: str, target: str) -> Tensors: ...
    def update(self, edit_id: str, prompt: str, target: str) -> Tensors: ...
    def load(self, edit_id: str, tensors: Tensors, withdrawn: bool = False) -> None: ...
    def load_many(self, items: list[tuple[str, Tensors, bool]]) -> dict[str, Exception]: ...
    def withdraw(self, edit_id: str) -> None: ...
    def discard(self, edit_id: str) -> None: ...
    def neurons(self, edit_id: str) -> int: ...
    def tensors(self, edit_id: str) -> Tensors: ...


@dataclass(frozen=True)
class Method:
    # build(backbone, settings, state): `state` is what `state(editor)` returned on the first start
    # with this data dir (None on that first start). `settings` is the server's Settings; a method
    # reads its own section of it (settings.ireva for iReVa).
    build: Callable[[Backbone, Any, Tensors | None], Editor]
    # Tensors every stored edit depends on; persisted once per data dir.
    state: Callable[[Editor], Tensors]
    # The settings the stored edits depend on. A later start with a different fingerprint refuses
    # the data dir rather than serve edits measured against another model or layer.
    fingerprint: Callable[[Backbone, Any], dict]


def _build_ireva(backbone: Backbone, settings: Any, state: Tensors | None) -> Editor:
    from editors.ireva.model import IrevaEditor

    return IrevaEditor(backbone, settings.ireva, centre=None if state is None else state["centre"])


def _ireva_state(editor: Editor) -> Tensors:
    return {"centre": editor.adaptor.centre}


def _ireva_fingerprint(backbone: Backbone, settings: Any) -> dict:
    # The keys are MLP inputs of one layer, centred on that layer's mean: both must stay the same.
    return {"model": backbone.name, "layer": settings.ireva.layer % backbone.num_layers}


def _build_serac(backbone: Backbone, settings: Any, state: Tensors | None) -> Editor:
    from editors.serac.method import build

    return build(backbone, settings, state)


def _serac_state(editor: Editor) -> Tensors:
    return {}  # every SERAC blob carries its own prompt, target and embedding


def _serac_fingerprint(backbone: Backbone, settings: Any) -> dict:
    from editors.serac.method import fingerprint

    return fingerprint(backbone, settings)


METHODS: dict[str, Method] = {
    "ireva": Method(build=_build_ireva, state=_ireva_state, fingerprint=_ireva_fingerprint),
    "serac": Method(build=_build_serac, state=_serac_state, fingerprint=_serac_fingerprint),
}
