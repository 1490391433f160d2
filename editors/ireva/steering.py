"""How iReVa's edits act on the rows of a batch, step by step (editors/engine.py `Steering`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class NeuronSteering:
    """iReVa under the scope gate, for a batch of rows each in the scope of one edit (or None).

    A row continuing a plain prompt gets the edit's neurons in target order, one per step, while the
    answer so far follows the target: neuron j writes after the first j target tokens, whatever the
    query's key (a paraphrase rarely ends on the edit prompt's key). A row answering a chat turn opens
    with the edit stated instead (editors/statement.py): those tokens are given, not written. Once the
    answer leaves the target or the statement, or has said all of it, the model goes on in its own
    words."""

    def __init__(self, editor: Any, edit_ids: Sequence[str | None], questions=None):  # editor: an IrevaEditor
        self.editor, self.edit_ids = editor, edit_ids
        asked = questions if questions is not None else [None] * len(edit_ids)
        self.openings = [
            editor.opening(e, q) if e is not None and q is not None else None for e, q in zip(edit_ids, asked)
        ]

    def slots_for(self, generated: list[list[int]]) -> list[int]:
        out = []
        for edit_id, done, opening in zip(self.edit_ids, generated, self.openings):
            slots = self.editor.slots.get(edit_id) if edit_id is not None and opening is None else None
            target = self.editor.targets.get(edit_id) if slots else None
            j = len(done)
            out.append(slots[j] if slots and target is not None and j < len(target) and done == target[:j] else -1)
        return out

    def forced(self, generated: list[list[int]]) -> list[tuple[int, str] | None]:
        out: list[tuple[int, str] | None] = []
        for edit_id, opening, done in zip(self.edit_ids, self.openings, generated):
            if opening is None or edit_id is None or len(done) >= len(opening):
                out.append(None)
            else:
                out.append((opening[len(done)], edit_id))
        return out

    def step(self, generated: list[list[int]]) -> list[str | None]:
        slots = self.slots_for(generated)
        self.editor.adaptor.writes = torch.tensor(slots, device=self.editor.adaptor.keys.device)
        return [e if s >= 0 else None for e, s in zip(self.edit_ids, slots)]

    def close(self) -> None:
        self.editor.adaptor.writes = None

    def without_edit(self):
        # Above the top layer nothing reads the cached states of the position the neuron wrote at.
        return None if self.editor.is_top_layer else self.editor.adaptor.disabled()
