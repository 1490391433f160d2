"""Greedy decoding with the KV cache, naming for each token the edit that produced it.

One loop serves every method. A method steers it through a `Steering`: before each step it says which
of its edits writes at that step (and sets its model up for it); an edit that acts below the top
layer also gives a context in which the same step runs without it, so that the cached keys and
values of that position are the unedited ones, as a full forward over the text would compute them
(an edit acts on the last position only). Cached generation thus equals a full forward, token by token.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from editors.backbone import Backbone, padded


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)
    tokens: list[tuple[str, str | None]] = field(default_factory=list)  # (text, edit id or None)


class Steering(Protocol):
    """How one method's edits act on a batch of rows (editors/registry.py `Editor.steer`)."""

    def step(self, generated: list[list[int]]) -> list[str | None]:
        """Set the model up for the next forward call, given each row's tokens so far; return, per
        row, the edit that writes at that step, if any."""

    def close(self) -> None:
        """Undo what step() set up."""

    def without_edit(self) -> AbstractContextManager | None:
        """A context in which the model runs unedited, when cached states must be recomputed in it
        after a step an edit wrote at (edits below the top layer); None when they need not be."""


def _step(model, ids: torch.Tensor, cache, start: int):
    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], out.past_key_values


@torch.no_grad()
def generate(
    backbone: Backbone,
    ids: list[int],
    max_new_tokens: int = 16,
    steering: Steering | None = None,
    attribute_to: str | None = None,
) -> Generation:
    """Greedy continuation of the token ids `ids`. Each token names the edit `steering` says wrote it,
    or `attribute_to` for every token (a method whose whole answer comes from one edit)."""
    from transformers import DynamicCache

    model, tok = backbone.model, backbone.tokenizer
    cache = DynamicCache(config=model.config)
    relay = steering is not None and steering.without_edit() is not None
    pending = torch.tensor([ids], device=backbone.device)
    length, out_ids, owners = 0, [], []
    try:
        for _ in range(max_new_tokens):
            writer = steering.step([out_ids])[0] if steering is not None else None
            logits, cache = _step(model, pending, cache, length)
            if relay and writer is not None:
                cache.crop(-1)  # drop the last position, then store it again computed without the edit
                with steering.without_edit():
                    _step(model, pending[:, -1:], cache, length + pending.shape[1] - 1)
            length += pending.shape[1]
            nxt = int(logits.argmax())
            if nxt == tok.eos_token_id:
                break
            out_ids.append(nxt)
            owners.append(attribute_to if attribute_to is not None else writer)
            pending = torch.tensor([[nxt]], device=backbone.device)
    finally:
        if steering is not None:
            steering.close()
    pieces = token_texts(tok, out_ids)
    return Generation(text="".join(pieces), token_ids=out_ids, tokens=list(zip(pieces, owners)))


@torch.no_grad()
def generate_batch(
    backbone: Backbone, prompts: list[list[int]], budgets: list[int], steering: Steering | None = None, context=None
) -> list[list[int]]:
    """Greedy continuations of many token-id prompts at once (left padding, each row at its own
    positions), each stopping at EOS or its budget; `steering` acts per row as in generate(). The
    harness uses it; a row's tokens equal generate()'s up to float rounding of the padded batch."""
    from transformers import DynamicCache

    model, eos, dev = backbone.model, backbone.tokenizer.eos_token_id, backbone.device
    pad = backbone.tokenizer.pad_token_id if backbone.tokenizer.pad_token_id is not None else 0
    ids, mask = padded(prompts, pad, dev)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache(config=model.config)
    out: list[list[int]] = [[] for _ in prompts]
    done = [b <= 0 for b in budgets]
    relay = steering is not None and steering.without_edit() is not None
    try:
        for _ in range(max(budgets, default=0)):
            if all(done):
                break
            writers = steering.step(out) if steering is not None else [None] * len(prompts)
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            cache_after = cache
            if relay and any(w is not None for w in writers):
                cache_after.crop(-1)  # store the last position again, computed without the edits
                with steering.without_edit():
                    model(
                        input_ids=ids[:, -1:],
                        attention_mask=mask,
                        position_ids=positions[:, -1:],
                        past_key_values=cache_after,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            nxt = logits[:, -1].argmax(-1).tolist()
            for row, token in enumerate(nxt):
                if done[row]:
                    continue
                if token == eos:
                    done[row] = True
                else:
                    out[row].append(token)
                    done[row] = len(out[row]) >= budgets[row]
            ids = torch.tensor(nxt, device=dev)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            positions = positions[:, -1:] + 1
    finally:
        if steering is not None:
            steering.close()
    return out


def token_texts(tok, ids: list[int]) -> list[str]:
    """Per-token strings whose concatenation equals the decoded text (multi-byte characters that
    span tokens are assigned to the token that completes them)."""
    pieces, prev = [], ""
    for i in range(1, len(ids) + 1):
        text = tok.decode(ids[:i])
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence so far
            pieces.append("")
            continue
        pieces.append(text[len(prev) :])
        prev = text
    if pieces and prev != tok.decode(ids):
        pieces[-1] += tok.decode(ids)[len(prev) :]
    return pieces
