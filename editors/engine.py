"""The one decoding step: every answer — streamed alone, in the server's running batch, or in the
harness's batches — is computed by `forward_rows` over `Rows`.

`Rows` are token sequences in one left-padded KV cache, each row at its own positions (counted from
its first real token), so that a row's tokens are the same alone or beside others. Each step a method
steers the rows through a `Steering`: it says, per row, which of its edits writes at that step, and
sets its model up for it, or names the token the row must give (words an edit states) or must not
(the old fact an edit replaces). An edit acts
on the last position only; an edit acting below the top layer
also gives a context in which the step runs without it, so that the cached keys and values of that
position are recomputed unedited, as a full forward over the text would compute them. Cached
generation thus equals a full forward, token by token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from editors.backbone import Backbone, padded
from editors.decoder import LeanCache


class Steering(Protocol):
    """How one method's edits act on a batch of rows (editors/registry.py `Editor.steer`)."""

    def step(self, generated: list[list[int]]) -> list[str | None]:
        """Set the model up for the next forward call, given each row's tokens so far; return, per
        row, the edit that writes at that step, if any."""

    def forced(self, generated: list[list[int]]) -> list[tuple[int, str] | None]:
        """Per row, the token this step must give and the edit that states it (its words are given,
        not computed: the model's states are not touched), or None: the model's choice."""

    def banned(self, generated: list[list[int]]) -> list[list[int]]:
        """Per row, tokens this step must not give: an edit's old fact, which the answer in its scope
        must not restate (editors/statement.py, old_answer)."""

    def close(self) -> None:
        """Undo what step() set up."""

    def without_edit(self) -> AbstractContextManager | None:
        """A context in which the model runs unedited, when cached states must be recomputed in it
        after a step an edit wrote at (edits below the top layer); None when they need not be."""


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def left_padded(backbone: Backbone, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids left padded to one width, their attention mask, and each token's position counted
    from its row's first real token (padding at 0)."""
    ids, mask = padded(seqs, pad_id(backbone.tokenizer), backbone.device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def forward(backbone: Backbone, ids, mask, positions, cache=None, keep: int = 1) -> torch.Tensor:
    """One forward pass; the logits of the last `keep` positions, (rows, keep, vocab). The fast path's
    lean forward (editors/decoder.py) for rows whose cache is its LeanCache (Rows.prefill chose it) and
    for a pass without a cache while no block carries hooks; transformers' otherwise."""
    if isinstance(cache, LeanCache):  # rows started on the lean forward stay on it
        if not backbone.lean.usable():
            raise RuntimeError("a block took hooks while rows ran on the lean forward, which would bypass them")
        return backbone.lean(ids, mask, positions, cache, keep)
    if cache is None and backbone.lean is not None and backbone.lean.usable():
        return backbone.lean(ids, mask, positions, cache, keep)
    out = backbone.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=None if cache is None else cache.inner,
        use_cache=cache is not None,
        logits_to_keep=keep,
    )
    return out.logits


def forward_rows(
    backbone: Backbone, ids, mask, positions, cache, steerings: Sequence[Steering], generated: list[list[int]]
) -> tuple[torch.Tensor, list[str | None]]:
    """One steered step of every row: the last position's logits (rows, vocab) and, per row, the edit
    that wrote or gave its token. `generated`: each row's answer so far (what the steerings decide on)."""
    writers: list[str | None] = [None] * len(generated)
    forced: list[tuple[int, str] | None] = [None] * len(generated)
    banned: list[list[int]] = [[] for _ in generated]
    for steering in steerings:
        for i, w in enumerate(steering.step(generated)):
            writers[i] = writers[i] or w
        for i, f in enumerate(steering.forced(generated)):
            forced[i] = forced[i] or f
        for i, b in enumerate(steering.banned(generated)):
            banned[i] += b
    logits = forward(backbone, ids, mask, positions, cache)[:, -1]
    for i, tokens in enumerate(banned):
        if tokens:
            logits[i, tokens] = float("-inf")
    relays = [r for r in (s.without_edit() for s in steerings) if r is not None]
    if cache is not None and relays and any(w is not None for w in writers):
        cache.crop(-1)  # drop the last position, then store it again computed without the edits
        with contextlib.ExitStack() as unedited:
            for relay in relays:
                unedited.enter_context(relay)
            forward(backbone, ids[:, -1:], mask, positions[:, -1:], cache)
    for i, given in enumerate(forced):
        if given is not None:  # the only choice: probability 1, whatever the sampling
            logits[i] = float("-inf")
            logits[i, given[0]] = 0.0
            writers[i] = writers[i] or given[1]
    return logits, writers


@torch.no_grad()
def next_tokens(backbone: Backbone, seqs: list[list[int]]) -> list[int]:
    """Greedy next token after each sequence, one batch without a cache (teacher forcing)."""
    if not seqs:
        return []
    ids, mask, positions = left_padded(backbone, seqs)
    return forward(backbone, ids, mask, positions)[:, -1].argmax(-1).tolist()


class DynamicKV:
    """transformers' DynamicCache (`inner`, what its forward extends) behind LeanCache's verbs: the cache
    of the rows that run through transformers' forward."""

    def __init__(self, backbone: Backbone):
        from transformers import DynamicCache

        self.inner: Any = DynamicCache(config=backbone.model.config)  # its layers DynamicLayer (Rows.mergeable)

    def crop(self, n: int) -> None:
        self.inner.crop(n)

    def select(self, index: list[int]) -> None:
        self.inner.batch_select_indices(torch.tensor(index, device=self.inner.layers[0].keys.device))

    def trim_left(self, n: int) -> None:
        for layer in self.inner.layers:
            layer.keys, layer.values = layer.keys[..., n:, :], layer.values[..., n:, :]

    def merge(self, other: DynamicKV) -> None:
        width = max(self.inner.get_seq_length(), other.inner.get_seq_length())
        for layer, new in zip(self.inner.layers, other.inner.layers):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(new.keys, width)], 0)
            layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(new.values, width)], 0)


class Rows:
    """Rows decoding together: their KV cache, its mask, and each row's next position."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        # None while there are no rows
        self.cache: Any = None  # LeanCache on the lean forward's path, DynamicKV on transformers'
        self.mask: Any = None  # (rows, cached length) tensor
        self.next: Any = None  # (rows, 1) tensor

    def __len__(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], steerings: Sequence[Steering] = ()):
        """Start these rows: their prompts in one left-padded pass. Returns the last position's logits
        and the writers, as forward_rows. The rows must be the only ones (merge() adds to a batch)."""
        assert self.mask is None, "prefill starts rows; merge() joins them to others"
        ids, mask, positions = left_padded(self.backbone, prompts)
        lean = self.backbone.lean
        self.cache = lean.new_cache(len(prompts)) if lean is not None and lean.usable() else DynamicKV(self.backbone)
        generated: list[list[int]] = [[] for _ in prompts]
        logits, writers = forward_rows(self.backbone, ids, mask, positions, self.cache, steerings, generated)
        self.mask, self.next = mask, positions[:, -1:] + 1
        return logits, writers

    @torch.no_grad()
    def decode(self, tokens: list[int], steerings: Sequence[Steering], generated: list[list[int]]):
        """One token more for every row (`tokens`: each row's latest). Returns as forward_rows."""
        ids = torch.tensor(tokens, device=self.backbone.device)[:, None]
        mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], 1)
        logits, writers = forward_rows(self.backbone, ids, mask, self.next, self.cache, steerings, generated)
        self.mask, self.next = mask, self.next + 1
        return logits, writers

    def mixable(self) -> bool:
        """Whether these rows can take their next step together with new rows' prompts (decode_joining)."""
        lean = self.backbone.lean
        return self.mask is not None and lean is not None and lean.mixable(self.cache)

    @torch.no_grad()
    def decode_joining(self, tokens: list[int], prompts: list[list[int]]) -> tuple[torch.Tensor, Rows]:
        """decode() of these rows and prefill() of new ones in one pass, for rows that no edit steers.
        Returns the logits (these rows, then the prompts) and the new rows, to keep() and merge()."""
        lean = self.backbone.lean
        ids = torch.tensor(tokens, device=self.backbone.device)[:, None]
        mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], 1)
        joined = Rows(self.backbone)
        prompt_ids, prompt_mask, prompt_positions = left_padded(self.backbone, prompts)
        joined.cache = lean.new_cache(len(prompts))
        logits = lean.mixed(ids, mask, self.next, self.cache, prompt_ids, prompt_mask, prompt_positions, joined.cache)
        self.mask, self.next = mask, self.next + 1
        joined.mask, joined.next = prompt_mask, prompt_positions[:, -1:] + 1
        return logits, joined

    def keep(self, index: list[int]) -> None:
        """Only these rows go on; padding that no remaining row needs is dropped."""
        if len(index) == len(self):
            return
        if not index:
            self.cache = self.mask = self.next = None
            return
        self.cache.select(index)
        select = torch.tensor(index, device=self.mask.device)
        self.mask, self.next = self.mask[select], self.next[select]
        first_real = int(self.mask.argmax(-1).min())
        if first_real > 0:
            self.cache.trim_left(first_real)
            self.mask = self.mask[:, first_real:]

    def merge(self, other: Rows) -> None:
        """Add `other`'s rows after these, both left padded to a common length."""
        if other.mask is None:
            return
        if self.mask is None:
            self.cache, self.mask, self.next = other.cache, other.mask, other.next
            return
        if type(self.cache) is not type(other.cache):
            raise RuntimeError("rows on the lean forward and rows on transformers' cannot share a batch")
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.cache.merge(other.cache)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)], 0)
        self.next = torch.cat([self.next, other.next], 0)

    @staticmethod
    def mergeable(backbone: Backbone) -> bool:
        """Whether caches of this model can be merged: plain per-layer caches (not sliding windows)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        probe = DynamicCache(config=backbone.model.config)
        return all(type(layer) is DynamicLayer for layer in probe.layers)


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before the sequence axis (the last but one for cached states, the last for a mask)."""
    axis = -2 if t.dim() == 4 else -1
    missing = width - t.shape[axis]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], axis)
