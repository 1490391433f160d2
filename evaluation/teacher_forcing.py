"""Token-level teacher-forced predictions (the iReVa paper's appendix 9.5 decomposition), and batched
greedy generation for the generation-based scores.

A (prompt, target) pair becomes one case per target token: the prompt plus the target tokens before
it, and the token expected next. Each case is its own forward pass, so an adaptor that acts on the last
position sees exactly the prefix it would see at that point of generation.

Batches are formed from sequences sorted by length (less padding); the same list of sequences is
always cut into the same batches, so two runs over one list (edited vs unedited model) do the same
arithmetic on every row whose computation the edit does not touch.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from editors.backbone import Backbone, encode_prompt, encode_target
from editors.engine import forward, left_padded
from editors.engine import next_tokens as next_tokens_of
from editors.generation import generate_batch


def prefix_cases(tokenizer, prompt: str, target: str) -> list[tuple[list[int], int]]:
    p_ids, t_ids = encode_prompt(tokenizer, prompt), encode_target(tokenizer, prompt, target)
    return [(p_ids + t_ids[:i], t) for i, t in enumerate(t_ids)]


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (stable: same input, same batches)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def next_tokens(
    backbone: Backbone, sequences: list[list[int]], batch_size: int = 32, progress: str | None = None
) -> torch.Tensor:
    """Greedy next token after each sequence (in input order), batched with left padding."""
    out = torch.zeros(len(sequences), dtype=torch.long)
    batches = _batches([len(s) for s in sequences], batch_size)
    for idx in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        out[idx] = torch.tensor(next_tokens_of(backbone, [sequences[i] for i in idx]))
    return out


@torch.no_grad()
def shared_next_tokens(
    backbone: Backbone,
    prompts: list[list[int]],
    targets: list[list[int]],
    batch_size: int = 32,
    progress: str | None = None,
    capture: torch.nn.Module | None = None,
):
    """The teacher-forced predictions of every prefix case of many (prompt, target) pairs, one forward
    pass per pair: a causal LM's logits at each position of prompt + target[:-1] are its predictions for
    the prefixes ending there. Valid for a plain model (no adaptor acting on the last position only);
    identical in exact arithmetic to `next_tokens` over the prefix cases, and to float noise in practice.

    Returns the predictions flat in case order (pair by pair, token by token) and, when `capture` is a
    module, its input at each case's last position (n_cases, hidden) — e.g. the adaptor's MLP.
    """
    fulls = [p + t[:-1] for p, t in zip(prompts, targets)]
    spans = [len(t) for t in targets]
    offsets = [0]
    for n in spans:
        offsets.append(offsets[-1] + n)
    preds = torch.zeros(offsets[-1], dtype=torch.long)
    captured = None
    seen: dict[str, torch.Tensor] = {}
    handle = None
    if capture is not None:
        handle = capture.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    try:
        batches = _batches([len(f) for f in fulls], batch_size)
        for idx in tqdm(batches, desc=progress, disable=progress is None, leave=False):
            idx = [i for i in idx if spans[i] > 0]
            if not idx:
                continue
            ids, mask, positions = left_padded(backbone, [fulls[i] for i in idx])
            keep = max(spans[i] for i in idx)
            top = forward(backbone, ids, mask, positions, keep=keep).argmax(-1).cpu()
            for row, i in enumerate(idx):
                preds[offsets[i] : offsets[i + 1]] = top[row, keep - spans[i] :]
            if capture is not None:
                x = seen["x"]
                if captured is None:
                    captured = torch.zeros(offsets[-1], x.shape[-1], dtype=x.dtype)
                width = x.shape[1]
                for row, i in enumerate(idx):
                    captured[offsets[i] : offsets[i + 1]] = x[row, width - spans[i] :].cpu()
    finally:
        if handle is not None:
            handle.remove()
    return preds, captured


def greedy(
    backbone: Backbone,
    prompts: list[list[int]],
    max_new_tokens: list[int] | int,
    batch_size: int = 32,
    progress: str | None = None,
) -> list[list[int]]:
    """Greedy continuations of many prompts at once by the plain backbone (the unedited model, FT), with
    a KV cache, stopping each at EOS: editors.generation.generate_batch over batches of like lengths.
    Edited models generate through editors/edited.py."""
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prompts)
    results: list[list[int]] = [[] for _ in prompts]
    for idx in tqdm(
        _batches([len(p) for p in prompts], batch_size), desc=progress, disable=progress is None, leave=False
    ):
        got = generate_batch(backbone, [prompts[i] for i in idx], [max_new_tokens[i] for i in idx])
        for i, made in zip(idx, got):
            results[i] = [step.token_id for step in made]
    return results
