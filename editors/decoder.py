"""One forward pass of a Llama-family decoder, lean: the computation of transformers' eager Llama
forward, op for op, without its per-call machinery (output capturing, mask building, the rotary
embedding recomputed each step). On a small model that machinery costs as much as the weights: on
the packaged model, int4, about half of a decoding step.

The blocks' parts are still called as modules (the norms, the projections, the MLP), so every hook an
editor puts on them acts as before: iReVa's neurons beside an MLP, an adapter's low-rank terms on a
projection. A model whose blocks themselves carry hooks, or which is not plain Llama, goes through
transformers' own forward (`LeanLlama.supports`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def one_thread():
    """torch's intra-op threads set to one for the block (process-wide: other threads' ops run on one
    too meanwhile), then back."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanLlama:
    """The forward pass of a transformers LlamaForCausalLM, over its own modules."""

    def __init__(self, model: Any):
        self.model = model
        inner = model.model
        self.blocks, self.embed, self.norm = inner.layers, inner.embed_tokens, inner.norm
        attention = self.blocks[0].self_attn
        self.head_dim, self.scaling = attention.head_dim, attention.scaling
        # cos and sin of every position, computed as the rotary module computes them, once
        cfg = model.config
        positions = torch.arange(cfg.max_position_embeddings, device=self.embed.weight.device)[None]
        probe = torch.zeros(1, dtype=self.embed.weight.dtype, device=positions.device)
        cos, sin = inner.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0], sin[0]

    @staticmethod
    def supports(model: Any) -> bool:
        """Plain Llama: default rotary embedding, no tensor-parallel split of its projections."""
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "llama" or getattr(config, "pretraining_tp", 1) != 1:
            return False
        return (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default") == "default"

    def usable(self) -> bool:
        """Whether no block carries a hook of its own (an evaluation system's capture of a block's
        input): those are called by transformers' forward only."""
        return not any(b._forward_hooks or b._forward_pre_hooks for b in self.blocks)

    def __call__(self, ids, mask, positions, cache=None, keep: int = 1) -> torch.Tensor:
        """Logits of the last `keep` positions, (rows, keep, vocab); `cache` (a DynamicCache) is
        extended by these positions as transformers' forward extends it. `mask`: each row left
        padded, its real tokens after its padding (editors/engine.py `Rows`)."""
        rows, new = ids.shape
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        starts = (mask.shape[1] - mask.sum(1)).tolist()  # each row's first real column
        h = self.embed(ids)
        for i, block in enumerate(self.blocks):
            attention = block.self_attn
            x = block.input_layernorm(h)
            q = attention.q_proj(x).view(rows, new, -1, self.head_dim).transpose(1, 2)
            k = attention.k_proj(x).view(rows, new, -1, self.head_dim).transpose(1, 2)
            v = attention.v_proj(x).view(rows, new, -1, self.head_dim).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            if cache is not None:
                k, v = cache.update(k, v, i)
            o = self._attend(q, k, v, starts)
            h = h + attention.o_proj(o.transpose(1, 2).reshape(rows, new, -1))
            h = h + block.mlp(block.post_attention_layernorm(h))
        h = self.norm(h)
        return self.model.get_output_embeddings()(h[:, -keep:])

    def _attend(self, q, k, v, starts: list[int]) -> torch.Tensor:
        """Attention row by row, each over its own tokens only, so that a row's result is the same,
        bit for bit, alone or beside rows of other lengths. (With weights computed in bfloat16 the
        slightest difference grows into another answer: attending over a padded batch at once made
        9 in 24 chat answers differ from the same question asked alone.)"""
        new, length = q.shape[2], k.shape[2]
        # One new position is microseconds of work a row: handing it to the thread pool costs more than
        # it (several times over while other threads want the cores). Each row and head is computed
        # alone either way, so the result is the same.
        with one_thread() if new == 1 else contextlib.nullcontext():
            if starts == [0]:
                return self._sdpa(q, k, v)
            out = q.new_zeros(q.shape)  # a padding position's output: never read by a real one
            for b, start in enumerate(starts):
                first = max(0, start - (length - new))  # the row's first real one of the new positions
                out[b : b + 1, :, first:] = self._sdpa(
                    q[b : b + 1, :, first:], k[b : b + 1, :, start:], v[b : b + 1, :, start:]
                )
            return out

    def _sdpa(self, q, k, v) -> torch.Tensor:
        """Causal attention of the last q positions of k's."""
        new, length = q.shape[2], k.shape[2]
        mask = None
        if 1 < new < length:  # new positions after cached ones: causal, aligned to the end
            mask = torch.ones(new, length, dtype=torch.bool, device=q.device).tril(length - new)
        causal = mask is None and new > 1
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=self.scaling, enable_gqa=True
        )
