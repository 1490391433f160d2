"""Greedy decoding with the KV cache, naming for each token the edit whose neuron produced it.

The adaptor acts on the last position of every forward call. During cached decoding that position's
keys and values are kept for later steps, while a full forward over the same text would have computed
them without the adaptor (it acts there on the last position only). Above the top layer nothing reads
them, so the two agree; for an adaptor lower down, a step on which a neuron fired is run again with the
adaptor off to store clean keys and values. Cached generation thus equals a full forward, token by token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editors.backbone import Backbone, encode_prompt
from editors.ireva.model import IrevaEditor


@dataclass
class Generation:
    text: str
    token_ids: list[int] = field(default_factory=list)
    tokens: list[tuple[str, str | None]] = field(default_factory=list)  # (text, edit id or None)


def _step(model, ids: torch.Tensor, cache, start: int):
    positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1], out.past_key_values


@torch.no_grad()
def generate(backbone: Backbone, editor: IrevaEditor | None, prompt: str, max_new_tokens: int = 16,
             attribute_to: str | None = None) -> Generation:
    """Greedy continuation of `prompt`. `attribute_to` names one edit for every token (SERAC's
    counterfactual path); otherwise each token names the iReVa edit that fired for it, if any."""
    from transformers import DynamicCache

    model, tok = backbone.model, backbone.tokenizer
    ids = encode_prompt(tok, prompt)
    cache = DynamicCache(config=model.config)
    adaptor = editor.adaptor if editor is not None else None
    relay = adaptor is not None and not editor.is_top_layer and adaptor.enabled
    pending = torch.tensor([ids], device=backbone.device)
    length, out_ids, owners = 0, [], []
    for _ in range(max_new_tokens):
        logits, cache = _step(model, pending, cache, length)
        fired = editor.fired_edit() if editor is not None else None
        if relay and fired is not None:
            cache.crop(-1)  # drop the last position, then store it again computed without the adaptor
            adaptor.enabled = False
            try:
                _step(model, pending[:, -1:], cache, length + pending.shape[1] - 1)
            finally:
                adaptor.enabled = True
        length += pending.shape[1]
        nxt = int(logits.argmax())
        if nxt == tok.eos_token_id:
            break
        out_ids.append(nxt)
        owners.append(attribute_to if attribute_to is not None else fired)
        pending = torch.tensor([[nxt]], device=backbone.device)
    pieces = _token_texts(tok, out_ids)
    return Generation(text="".join(pieces), token_ids=out_ids, tokens=list(zip(pieces, owners)))


def _token_texts(tok, ids: list[int]) -> list[str]:
    """Per-token strings whose concatenation equals the decoded text (multi-byte characters that
    span tokens are assigned to the token that completes them)."""
    pieces, prev = [], ""
    for i in range(1, len(ids) + 1):
        text = tok.decode(ids[:i])
        if text.endswith("\ufffd"):  # incomplete UTF-8 sequence so far
            pieces.append("")
            continue
        pieces.append(text[len(prev):])
        prev = text
    if pieces and prev != tok.decode(ids):
        pieces[-1] += tok.decode(ids)[len(prev):]
    return pieces
