"""Generation with SERAC in front of the (iReVa-adapted) backbone.

Precedence: a query in scope of a live SERAC edit is answered by the counterfactual path, and every
token names that edit; iReVa's neurons are switched off for it (the counterfactual prompt states the
edit, an iReVa neuron firing on it would answer a different question). Any other query goes to
the backbone with the iReVa neurons, exactly as without SERAC.
"""
from __future__ import annotations

import contextlib

from editors.generation import Generation, generate


def _ireva_off(ireva):
    @contextlib.contextmanager
    def off():
        adaptor = getattr(ireva, "adaptor", None) if ireva is not None else None
        if adaptor is None:
            yield
            return
        was = adaptor.enabled
        adaptor.enabled = False
        try:
            yield
        finally:
            adaptor.enabled = was
    return off()


def first_line(gen: Generation) -> Generation:
    """Cut a counterfactual continuation after its answer: at the first newline that follows text."""
    kept_ids, kept_tokens, seen_text = [], [], False
    for tid, (piece, owner) in zip(gen.token_ids, gen.tokens):
        cut = -1
        for i, ch in enumerate(piece):
            if ch == "\n" and seen_text:
                cut = i
                break
            if not ch.isspace():
                seen_text = True
        if cut >= 0:
            if piece[:cut].strip():
                kept_ids.append(tid)
                kept_tokens.append((piece[:cut], owner))
            break
        kept_ids.append(tid)
        kept_tokens.append((piece, owner))
    return Generation(text="".join(p for p, _ in kept_tokens), token_ids=kept_ids, tokens=kept_tokens)


def counterfactual_generate(serac, edit_id: str, prompt: str, max_new_tokens: int = 16, ireva=None) -> Generation:
    lock = getattr(ireva, "lock", None) or contextlib.nullcontext()
    with lock, _ireva_off(ireva), serac.counterfactual():
        gen = generate(serac.backbone, None, serac.counterfactual_prompt(edit_id, prompt), max_new_tokens,
                       attribute_to=edit_id)
    return first_line(gen)


def generate_routed(backbone, ireva, serac, prompt: str, max_new_tokens: int = 16) -> Generation:
    """SERAC first (if any edit is live), then the iReVa-adapted backbone."""
    edit_id = serac.route(prompt) if serac is not None else None
    if edit_id is not None:
        return counterfactual_generate(serac, edit_id, prompt, max_new_tokens, ireva)
    lock = getattr(ireva, "lock", None) or contextlib.nullcontext()
    with lock:
        return generate(backbone, ireva, prompt, max_new_tokens)
