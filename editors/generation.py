"""Greedy decoding with the KV cache, naming for each token the edit that produced it.

One loop serves every method. A method steers it through a `Steering`: before each step it says which
of its edits writes at that step (and sets its model up for it); an edit that acts below the top
layer also gives a context in which the same step runs without it, so that the cached keys and
values of that position are the unedited ones, as a full forward over the text would compute them
(an edit acts on the last position only). Cached generation thus equals a full forward, token by token.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    pieces: list | None = None  # text_stream.Piece per token, with log-probabilities when asked for
    end: object | None = None  # text_stream.End: why the answer ended, token counts


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


def batch_step(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
    """One cached forward pass of a left-padded batch (each row at its own positions); the last
    position's logits, (rows, vocab)."""
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def _step(model, ids: torch.Tensor, cache, start: int):
    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], out.past_key_values


@dataclass(frozen=True)
class Sampling:
    """How each next token is chosen: the most likely one at temperature 0 (greedy, the default);
    otherwise drawn from the softmax at `temperature`, kept to the smallest set of tokens whose
    probability reaches `top_p`, from a generator seeded with `seed` (the same seed, the same draw).
    `logprobs`: also report the chosen token's log-probability under the model and this many of the
    most likely alternatives (None: none)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None


GREEDY = Sampling()


@dataclass
class Step:
    token_id: int
    edit_id: str | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # the most likely tokens and their log-probabilities


class Chooser:
    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = None
        if sampling.temperature > 0:
            # Drawn on the CPU, so a seed gives the same tokens on any device.
            self.rng = torch.Generator()
            self.rng.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, edit_id: str | None) -> Step:
        s = self.sampling
        logits = logits.float().cpu()
        token = int(logits.argmax())
        if self.rng is not None:
            # In float64, and greedy where the temperature is so small that the softmax overflows: the
            # limit of sampling as the temperature goes to 0.
            probs = torch.softmax(logits.double() / s.temperature, -1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # every token before the mass reaches top_p, and the one that reaches it
                keep = sorted_p.cumsum(-1) - sorted_p < s.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            if bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0:
                token = int(torch.multinomial(probs, 1, generator=self.rng))
        if s.logprobs is None:
            return Step(token, edit_id)
        logp = torch.log_softmax(logits, -1)
        top = logp.topk(s.logprobs) if s.logprobs > 0 else None
        alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        return Step(token, edit_id, float(logp[token]), alternatives)


@torch.no_grad()
def steps(
    backbone: Backbone,
    ids: list[int],
    max_new_tokens: int = 16,
    steering: Steering | None = None,
    attribute_to: str | None = None,
    sampling: Sampling = GREEDY,
) -> Iterator[Step]:
    """The continuation of the token ids `ids`, one token at a time, until EOS (not yielded) or
    `max_new_tokens`. Each token names the edit `steering` says wrote it, or `attribute_to` (a method
    whose whole answer comes from one edit). Closing the iterator early undoes the steering."""
    from transformers import DynamicCache

    model, eos = backbone.model, backbone.tokenizer.eos_token_id
    cache = DynamicCache(config=model.config)
    relay = steering is not None and steering.without_edit() is not None
    choose = Chooser(sampling)
    pending = torch.tensor([ids], device=backbone.device)
    length, out_ids = 0, []
    try:
        for _ in range(max_new_tokens):
            writer = steering.step([out_ids])[0] if steering is not None else None
            logits, cache = _step(model, pending, cache, length)
            if relay and writer is not None:
                cache.crop(-1)  # drop the last position, then store it again computed without the edit
                with steering.without_edit():
                    _step(model, pending[:, -1:], cache, length + pending.shape[1] - 1)
            length += pending.shape[1]
            step = choose(logits, attribute_to if attribute_to is not None else writer)
            if step.token_id == eos:
                return
            out_ids.append(step.token_id)
            yield step
            pending = torch.tensor([[step.token_id]], device=backbone.device)
    finally:
        if steering is not None:
            steering.close()


def generate(
    backbone: Backbone,
    ids: list[int],
    max_new_tokens: int = 16,
    steering: Steering | None = None,
    attribute_to: str | None = None,
) -> Generation:
    """Greedy continuation of `ids`, whole (steps() collected)."""
    got = list(steps(backbone, ids, max_new_tokens, steering, attribute_to))
    pieces = token_texts(backbone.tokenizer, [s.token_id for s in got])
    return Generation("".join(pieces), [s.token_id for s in got], list(zip(pieces, [s.edit_id for s in got])))


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
            logits = batch_step(model, ids, mask, positions, cache)
            if relay and any(w is not None for w in writers):
                cache.crop(-1)  # store the last position again, computed without the edits
                with steering.without_edit():
                    batch_step(model, ids[:, -1:], mask, positions[:, -1:], cache)
            nxt = logits.argmax(-1).tolist()
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
