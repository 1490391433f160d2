"""One forward pass of a Llama-family decoder, lean: the computation of transformers' eager Llama
forward without its per-call machinery (output capturing, mask building, the rotary embedding
recomputed each step). On a small model that machinery costs as much as the weights: on the packaged
model, int4, about half of a decoding step. A prompt's pass is transformers' op for op; a decoding
step's attention (one new position a row) is one kernel call a layer over a cache allocated ahead
(`LeanCache`, editors/kernels/attend.cpp): the same sums in another order, so its logits equal
transformers' to float rounding; the kernel computes each row over its own columns, whatever its
neighbours. New rows' prompts may go through the running rows' step (`mixed`): their tokens beside
the rows' in every projection and MLP, each part attended as it would be alone.

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


class LeanCache:
    """Every layer's keys and values in buffers allocated ahead, (rows, kv heads, capacity, head dim), the
    first `length` columns filled, each row left padded as its mask (editors/engine.py `Rows`). A step
    writes its column in place: transformers' DynamicCache concatenates every layer every step, copying
    the whole cache. `keys` and `values` are views of the rows held (`rows` of the buffers) from the
    first column kept: rows leaving as a run and padding dropped on the left move the view, not the data,
    and rows joining are written into the buffers' spare rows."""

    SPARE = 64  # columns allocated beyond what is needed: one reallocation in 64 steps at most
    SPARE_ROWS = 8  # rows allocated beyond those held: as many joins before the buffers are copied

    def __init__(self, layers: int, rows: int, kv_heads: int, head_dim: int, like: torch.Tensor):
        empty = like.new_zeros(rows, kv_heads, 0, head_dim)  # the model's device and dtype
        self._keys, self._values = [empty] * layers, [empty] * layers  # the buffers
        self.rows, self.first_column = (0, rows), 0
        self.length = 0
        self._view()

    def _view(self) -> None:
        (r0, r1), c0 = self.rows, self.first_column
        self.keys = [b[r0:r1, :, c0:] for b in self._keys]
        self.values = [b[r0:r1, :, c0:] for b in self._values]

    def _reset(self, keys: list[torch.Tensor], values: list[torch.Tensor], rows: int) -> None:
        """New buffers, holding their first `rows` rows from column 0."""
        self._keys, self._values = keys, values
        self.rows, self.first_column = (0, rows), 0
        self._view()

    def reserve(self, new: int) -> None:
        """Room for `new` more columns."""
        if self.length + new > self.keys[0].shape[2]:
            width, rows = self.length + new + self.SPARE, self.keys[0].shape[0]
            keys = [self._placed([k], width, [self.length], self.SPARE_ROWS) for k in self.keys]
            values = [self._placed([v], width, [self.length], self.SPARE_ROWS) for v in self.values]
            self._reset(keys, values, rows)

    @staticmethod
    def _placed(parts: list[torch.Tensor], width: int, lengths: list[int], spare_rows: int = 0) -> torch.Tensor:
        """One buffer `width` columns wide holding the parts' rows one after another, each part's first
        `lengths` columns right-aligned to the longest length, zeros before them, then `spare_rows`
        rows. The columns after, and the spare rows, are left as allocated: written before read."""
        first = parts[0]
        rows = sum(p.shape[0] for p in parts)
        out = first.new_empty(rows + spare_rows, first.shape[1], width, first.shape[3])
        end, row = max(lengths), 0
        for part, length in zip(parts, lengths):
            block = out[row : row + part.shape[0]]
            block[:, :, : end - length] = 0
            block[:, :, end - length : end] = part[:, :, :length]
            row += part.shape[0]
        return out

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's new keys and values (rows, kv heads, new, head dim) after its filled columns (reserved);
        returns all of them. `length` moves on once every layer has its new columns (`advance`)."""
        end = self.length + k.shape[2]
        self.keys[i][:, :, self.length : end] = k
        self.values[i][:, :, self.length : end] = v
        return self.keys[i][:, :, :end], self.values[i][:, :, :end]

    def advance(self, new: int) -> None:
        self.length += new

    def crop(self, n: int) -> None:
        """As DynamicCache.crop: keep the first n columns, or for n < 0 forget the last -n."""
        self.length = max(0, self.length + n) if n < 0 else min(n, self.length)

    def select(self, index: list[int]) -> None:
        """Only these rows, in this order. A run of consecutive rows is a view, nothing copied: rows
        finish about in the order they joined, so the rows left are most often such a run."""
        first, count = index[0], len(index)
        if index == list(range(first, first + count)):
            start = self.rows[0] + first
            self.rows = (start, start + count)
            self._view()
            return
        rows = torch.tensor(index, device=self.keys[0].device)

        def chosen(t: torch.Tensor) -> torch.Tensor:  # into new buffers with spare rows
            out = t.new_empty(count + self.SPARE_ROWS, *t.shape[1:])
            torch.index_select(t, 0, rows, out=out[:count])
            return out

        self._reset([chosen(k) for k in self.keys], [chosen(v) for v in self.values], count)

    def trim_left(self, n: int) -> None:
        """Drop the first n columns (padding no row needs any more)."""
        self.first_column += n
        self.length -= n
        self._view()

    def merge(self, other: LeanCache) -> None:
        """other's rows after these, both left padded to the longer length: written into the spare rows
        where they fit (no longer than these), the buffers copied otherwise."""
        joining, (r0, r1), c0 = other.keys[0].shape[0], self.rows, self.first_column
        if other.length <= self.length and r1 + joining <= self._keys[0].shape[0]:
            pad = self.length - other.length
            for buffer, part in zip(self._keys + self._values, other.keys + other.values):
                block = buffer[r1 : r1 + joining, :, c0 : c0 + self.length]
                block[:, :, :pad] = 0
                block[:, :, pad:] = part[:, :, : other.length]
            self.rows = (r0, r1 + joining)
            self._view()
            return
        width, lengths = max(self.length, other.length) + self.SPARE, [self.length, other.length]
        keys = [self._placed([a, b], width, lengths, self.SPARE_ROWS) for a, b in zip(self.keys, other.keys)]
        values = [self._placed([a, b], width, lengths, self.SPARE_ROWS) for a, b in zip(self.values, other.values)]
        self._reset(keys, values, r1 - r0 + joining)
        self.length = max(lengths)


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
        # a decoding step's attention in one call (editors/kernels/attend.cpp): float32 on a CPU
        self.kernel: Any = None
        if self.cos.device.type == "cpu" and self.cos.dtype == torch.float32 and self.head_dim % 16 == 0:
            from editors import kernels

            try:
                self.kernel = kernels.load()
            except RuntimeError:  # no compiler: the step's attention in torch ops, as a prompt's
                pass

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

    def new_cache(self, rows: int) -> LeanCache:
        attention = self.blocks[0].self_attn
        kv_heads = attention.k_proj.out_features // self.head_dim
        return LeanCache(len(self.blocks), rows, kv_heads, self.head_dim, self.embed.weight)

    def __call__(self, ids, mask, positions, cache: LeanCache | None = None, keep: int = 1) -> torch.Tensor:
        """Logits of the last `keep` positions, (rows, keep, vocab); `cache` is extended by these
        positions. `mask`: each row left padded, its real tokens after its padding (editors/engine.py
        `Rows`), over the cached columns and these."""
        rows, new = ids.shape
        if cache is not None and mask.shape[1] != cache.length + new:
            raise ValueError(f"mask covers {mask.shape[1]} columns; the cache holds {cache.length}, and {new} are new")
        starts = mask.shape[1] - mask.sum(1)  # each row's first real column
        step = cache is not None and new == 1 and self.kernel is not None
        if cache is not None:
            cache.reserve(new)
        if step:  # each row's angles: (rows, head dim)
            cos, sin = self.cos[positions[:, 0]], self.sin[positions[:, 0]]
        else:  # (rows, 1, new, head dim): one for every head
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        if step:
            assert cache is not None

            def attend(i, q, k, v):
                return self._step(i, q[:, 0], k[:, 0], v[:, 0], cos, sin, cache, starts)[:, None]

        else:
            first_real = starts.tolist()  # the row-by-row attention's (a sync: not per step)

            def attend(i, q, k, v):
                return self._attend(q, k, v, cos, sin, cache, i, first_real)

        h = self._blocks(self.embed(ids), attend)
        if cache is not None:
            cache.advance(new)
        h = self.norm(h)
        return self.model.get_output_embeddings()(h[:, -keep:])

    def _blocks(self, h: torch.Tensor, attend) -> torch.Tensor:
        """Every block over h; `attend(layer, q, k, v)` is the attention, the one part that differs
        between a prompt's pass, a decoding step and the two mixed."""
        for i, block in enumerate(self.blocks):
            attention = block.self_attn
            x = block.input_layernorm(h)
            o = attend(i, attention.q_proj(x), attention.k_proj(x), attention.v_proj(x))
            h = h + attention.o_proj(o)
            h = h + block.mlp(block.post_attention_layernorm(h))
        return h

    def _step(self, layer: int, q, k, v, cos, sin, cache: LeanCache, starts) -> torch.Tensor:
        """A decoding step's attention, one new position a row (rows, heads x head dim): the kernel."""
        return self.kernel.decode_attend(
            q, k, v, cos, sin, cache.keys[layer], cache.values[layer], cache.length, starts, self.scaling
        )

    def mixable(self, cache: Any) -> bool:
        """Whether rows on this cache can take a step together with new rows' prompts (`mixed`)."""
        return isinstance(cache, LeanCache) and self.kernel is not None and self.usable()

    def mixed(
        self, ids, mask, positions, cache: LeanCache, prompt_ids, prompt_mask, prompt_positions, joined: LeanCache
    ) -> torch.Tensor:
        """A decoding step of the cached rows and the prompts' pass of new rows (into `joined`, empty), in
        one pass: the projections and the MLPs read their weights once for every token of both (vLLM's
        chunked prefill), the attention is each part's own. Returns the logits of the rows' next tokens,
        then of the prompts' last positions, (rows + prompts, vocab). No hook may act on a position:
        every module sees the two parts' tokens as one sequence."""
        rows, (joins, width) = ids.shape[0], prompt_ids.shape
        if mask.shape[1] != cache.length + 1 or joined.length != 0:
            raise ValueError("mixed: the mask must cover the cache and one new column, and `joined` be empty")
        starts = mask.shape[1] - mask.sum(1)
        prompt_starts = (width - prompt_mask.sum(1)).tolist()
        cache.reserve(1)
        joined.reserve(width)
        cos, sin = self.cos[positions[:, 0]], self.sin[positions[:, 0]]
        prompt_cos, prompt_sin = self.cos[prompt_positions][:, None], self.sin[prompt_positions][:, None]

        def attend(i, q, k, v):  # (1, rows + joins x width, heads x head dim): the rows' tokens first
            q, k, v = q[0], k[0], v[0]
            stepped = self._step(i, q[:rows], k[:rows], v[:rows], cos, sin, cache, starts)
            qp, kp, vp = (t[rows:].view(joins, width, -1) for t in (q, k, v))
            prompted = self._attend(qp, kp, vp, prompt_cos, prompt_sin, joined, i, prompt_starts)
            return torch.cat([stepped, prompted.reshape(joins * width, -1)])[None]

        h = self._blocks(self.embed(torch.cat([ids[:, 0], prompt_ids.reshape(-1)]))[None], attend)
        cache.advance(1)
        joined.advance(width)
        last = torch.cat([torch.arange(rows), rows + width * torch.arange(1, joins + 1) - 1]).to(h.device)
        return self.model.get_output_embeddings()(self.norm(h[0, last]))

    def _attend(self, q, k, v, cos, sin, cache: LeanCache | None, layer: int, starts: list[int]) -> torch.Tensor:
        """Rotary, the cache, then attention row by row, each over its own tokens only, so that a row's
        result is the same, bit for bit, alone or beside rows of other lengths. (With weights computed
        in bfloat16 the slightest difference grows into another answer: attending over a padded batch
        at once made 9 in 24 chat answers differ from the same question asked alone.) Returns
        (rows, new, heads × head dim)."""
        rows, new = q.shape[:2]
        q = q.view(rows, new, -1, self.head_dim).transpose(1, 2)
        k = k.view(rows, new, -1, self.head_dim).transpose(1, 2)
        v = v.view(rows, new, -1, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.append(layer, k, v)
        length = k.shape[2]
        if starts == [0]:
            out = self._sdpa(q, k, v)
        else:
            out = q.new_zeros(q.shape)  # a padding position's output: never read by a real one
            for b, start in enumerate(starts):
                first = max(0, start - (length - new))  # the row's first real one of the new positions
                out[b : b + 1, :, first:] = self._sdpa(
                    q[b : b + 1, :, first:], k[b : b + 1, :, start:], v[b : b + 1, :, start:]
                )
        return out.transpose(1, 2).reshape(rows, new, -1)

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
