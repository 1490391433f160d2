"""How iReVa's edits act on the rows of a batch, step by step (editors/engine.py `Steering`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from editors.backbone import encode_prompt
from editors.scope.answer import AGENT, asks
from editors.statement import asks_yes_or_no, old_answer, old_settled, words

OLD_TOKENS = 6  # the unedited continuation of an edit's prompt read for the fact it replaces
# An answer that opens with the edit stated says this many tokens of its own before it may end. Left
# free, the model takes the stated edit for the whole answer and stops, at half the length the unedited
# model answers with (docs/results.md, fluency).
OWN_TOKENS = 12


class NeuronSteering:
    """iReVa under the scope gate, for a batch of rows each in the scope of one edit (or None).

    A row continuing a plain prompt gets the edit's neurons in target order, one per step, while the
    answer so far follows the target: neuron j writes after the first j target tokens, whatever the
    query's key (a paraphrase rarely ends on the edit prompt's key). A row answering a chat turn opens
    with the edit stated instead (editors/statement.py): those tokens are given, not written. Once the
    answer leaves the target or the statement, or has said all of it, the model goes on in its own
    words, all but the old fact's."""

    def __init__(self, editor: Any, edit_ids: Sequence[str | None], questions=None):  # editor: an IrevaEditor
        self.editor, self.edit_ids = editor, edit_ids
        asked = questions if questions is not None else [None] * len(edit_ids)
        self.openings = [
            editor.opening(e, q) if e is not None and q is not None else None for e, q in zip(edit_ids, asked)
        ]
        self.olds = [editor.old(e) if e is not None else [] for e in edit_ids]
        # Per row, how long the answer must be before it may end. A yes/no answer is whole once it has
        # given the verdict and the fact ("No. The Louvre is located in Madrid, Spain.").
        self.end = editor.backbone.tokenizer.eos_token_id
        self.own = [
            len(o) + OWN_TOKENS if o is not None and self.end is not None and not asks_yes_or_no(q) else 0
            for o, q in zip(self.openings, asked)
        ]
        # Per row, the edit's fact as said (its opening, or its target), where it names an agent: the next
        # token may not make it a possessive ("The Mona Lisa was painted by Rembrandt's master").
        said = [
            o if o is not None else editor.targets.get(e) if e is not None else None
            for e, o in zip(edit_ids, self.openings)
        ]
        self.agent_said = [
            t if t and e in editor.facts and asks(editor.facts[e][0]) == AGENT else None for e, t in zip(edit_ids, said)
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

    def banned(self, generated: list[list[int]]) -> list[list[int]]:
        """A row in an edit's scope never starts the word of the fact the edit replaced (a token the
        edit gives or writes is the target's, never one of these: editors/ireva/model.py, old_tokens),
        nor ends before it has said OWN_TOKENS of its own after the edit's statement, nor makes the agent
        an edit names a possessive right after it."""
        out = [old + [self.end] if len(done) < own else old for old, own, done in zip(self.olds, self.own, generated)]
        for i, (fact, done) in enumerate(zip(self.agent_said, generated)):
            if fact is not None and done == fact:
                out[i] = out[i] + self.editor.possessive
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


def possessive_ids(tokenizer) -> list[int]:
    """The tokens a possessive after a name opens with ("'s", or "'" where the tokenizer splits it)."""
    return sorted({tokenizer(p, add_special_tokens=False)["input_ids"][0] for p in ("'s", "’s")})


def old_tokens(editor: Any, prompt: str, target: str) -> list[int]:
    """The first token of the fact an edit replaces, after a space and at a line's start: what the
    unedited model says after the edit's prompt (statement.old_answer). Nothing where that word is in
    the prompt itself (part of a name: "Autonomous University of Madrid"), where its first token is
    the target's, or where that token is a fragment of under three letters, which would ban others."""
    tok = editor.backbone.tokenizer
    ids = encode_prompt(tok, prompt)
    said: list[int] = []
    with editor.lock, editor.adaptor.disabled(), torch.no_grad():
        step, cache = torch.tensor([ids], device=editor.backbone.device), None
        for _ in range(OLD_TOKENS):
            out = editor.backbone.model(step, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            said.append(int(out.logits[0, -1].argmax()))
            if old_settled(tok.decode(said), target):
                break
            step = torch.tensor([[said[-1]]], device=editor.backbone.device)
    old = old_answer(tok.decode(said), target)
    if old is None or old.casefold() in words(prompt):
        return []
    mine = {tok(t, add_special_tokens=False)["input_ids"][0] for t in (" " + target.strip(), target.strip())}
    firsts = {tok(t, add_special_tokens=False)["input_ids"][0] for t in (" " + old, old)}
    return sorted(t for t in firsts - mine if len(tok.decode([t]).strip()) >= min(3, len(old)))
