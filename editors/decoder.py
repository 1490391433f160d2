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

from typing import Any

import torch
import torch.nn.functional as F


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
        extended by these positions as transformers' forward extends it."""
        rows, new = ids.shape
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        attn_mask, causal = self._mask(mask, new, cache)
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
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=causal, scale=self.scaling, enable_gqa=True
            )
            h = h + attention.o_proj(o.transpose(1, 2).reshape(rows, new, -1))
            h = h + block.mlp(block.post_attention_layernorm(h))
        h = self.norm(h)
        return self.model.get_output_embeddings()(h[:, -keep:])

    @staticmethod
    def _mask(mask: torch.Tensor, new: int, cache) -> tuple[torch.Tensor | None, bool]:
        """What each new position may attend to: (a boolean (rows, 1, new, length) mask, or None and
        whether plain causal attention does)."""
        cached = 0 if cache is None else cache.get_seq_length()
        if (new == 1 or cached == 0) and bool(mask.all()):  # no padding: causal attention says it all
            return None, new > 1
        length = mask.shape[1]
        col = torch.arange(length, device=mask.device)
        query_col = torch.arange(length - new, length, device=mask.device)
        allowed = (col[None, :] <= query_col[:, None])[None] & mask[:, None, :].bool()
        # a padding position sees itself: a row of nothing but masked scores would give NaN
        allowed |= (col[None, :] == query_col[:, None])[None]
        return allowed[:, None], False
