"""Token-level teacher-forced predictions (the iReVa paper's appendix 9.5 decomposition).

A (prompt, target) pair becomes one case per target token: the prompt plus the target tokens before
it, and the token expected next. Each case is its own forward pass, so an adaptor that acts on the last
position sees exactly the prefix it would see at that point of generation.
"""
from __future__ import annotations

import torch

from editors.backbone import Backbone, encode_prompt, encode_target


def prefix_cases(tokenizer, prompt: str, target: str) -> list[tuple[list[int], int]]:
    p_ids, t_ids = encode_prompt(tokenizer, prompt), encode_target(tokenizer, prompt, target)
    return [(p_ids + t_ids[:i], t) for i, t in enumerate(t_ids)]


@torch.no_grad()
def next_tokens(backbone: Backbone, sequences: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """Greedy next token after each sequence, batched with left padding."""
    pad = backbone.tokenizer.pad_token_id
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=backbone.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=backbone.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = backbone.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                use_cache=False, logits_to_keep=1).logits
        out.append(logits[:, -1].argmax(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
