"""The lean Llama forward (editors/decoder.py): the same logits as transformers' forward, the same
tokens for a row alone or beside others, hooks that still act, and transformers' forward wherever
the lean one cannot go."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from editors import quant
from editors.backbone import Backbone, transformer_blocks
from editors.decoder import LeanLlama
from editors.engine import Rows, forward, left_padded
from editors.generation import generate_batch
from tests.tiny_models import packaged_tokenizer, tiny_backbone

PROMPTS = ["The Eiffel Tower is located in", "Hi", "What is the capital of France? Answer:"]


def tiny(mode: str = "none", kind: str = "llama", dtype: torch.dtype = torch.float32) -> Backbone:
    backbone = tiny_backbone(kind, packaged_tokenizer(), seed=2, layers=2)
    backbone.model.to(dtype)
    quant.quantise(backbone.model, mode, transformer_blocks(backbone.model))
    if LeanLlama.supports(backbone.model):
        backbone.lean = LeanLlama(backbone.model)
    return backbone


def ids_of(backbone: Backbone) -> list[list[int]]:
    return [backbone.tokenizer(p)["input_ids"] for p in PROMPTS]


@torch.no_grad()
def test_one_row_gets_transformers_logits_bit_for_bit_prompt_and_within_rounding_decoding():
    for mode in ("none", "int4"):
        backbone = tiny(mode)
        ids, mask, positions = left_padded(backbone, ids_of(backbone)[2:])
        theirs, ours = DynamicCache(config=backbone.model.config), backbone.lean.new_cache(1)
        expected = backbone.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        assert torch.equal(backbone.lean(ids, mask, positions, None, ids.shape[1]), expected), mode
        kwargs = {"attention_mask": mask, "position_ids": positions, "past_key_values": theirs, "use_cache": True}
        a = backbone.model(input_ids=ids, logits_to_keep=1, **kwargs).logits
        b = backbone.lean(ids, mask, positions, ours)
        assert torch.equal(a, b), mode  # the prompt: transformers' ops, one for one
        for _ in range(4):  # decoding: the kernel's attention, the same sums in another order
            token = a[:, -1].argmax(-1)[:, None]
            mask, positions = torch.cat([mask, mask.new_ones(1, 1)], 1), positions[:, -1:] + 1
            kwargs = {"attention_mask": mask, "position_ids": positions, "past_key_values": theirs, "use_cache": True}
            a = backbone.model(input_ids=token, logits_to_keep=1, **kwargs).logits
            b = backbone.lean(token, mask, positions, ours)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), mode
            assert ours.length == theirs.get_seq_length()


@torch.no_grad()
def test_the_step_kernel_attends_each_row_over_its_own_columns_only():
    backbone = tiny("int4")  # int4 needs the kernels built: the step's attention kernel is among them
    assert backbone.lean.kernel is not None
    prompts = ids_of(backbone)
    ids, mask, positions = left_padded(backbone, prompts)
    cache = backbone.lean.new_cache(len(prompts))
    backbone.lean(ids, mask, positions, cache)
    garbage = mask.shape[1] - len(prompts[1])  # the short row's padding columns: never read
    for keys, values in zip(cache.keys, cache.values):
        keys[1, :, :garbage] = values[1, :, :garbage] = float("nan")
    token = torch.tensor([[7]] * len(prompts))
    mask2 = torch.cat([mask, mask.new_ones(len(prompts), 1)], 1)
    together = backbone.lean(token, mask2, positions[:, -1:] + 1, cache)[:, -1]
    assert torch.isfinite(together).all()
    for i, prompt in enumerate(prompts):  # each row alone (its matmuls of one row sum in another order)
        one, one_mask, one_positions = left_padded(backbone, [prompt])
        alone = backbone.lean.new_cache(1)
        backbone.lean(one, one_mask, one_positions, alone)
        step = backbone.lean(
            token[:1], torch.cat([one_mask, one_mask.new_ones(1, 1)], 1), one_positions[:, -1:] + 1, alone
        )
        assert torch.allclose(step[0, -1], together[i], atol=1e-5, rtol=1e-5), i


@torch.no_grad()
def test_padded_rows_get_transformers_logits_within_float_error():
    backbone = tiny("none")
    ids, mask, positions = left_padded(backbone, ids_of(backbone))
    expected = backbone.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = backbone.lean(ids, mask, positions, None, ids.shape[1])
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()  # padding positions too: a NaN there would spread to the real ones


@torch.no_grad()
def test_rows_leaving_and_joining_a_batch_decode_each_row_as_alone():
    backbone = tiny("int4")
    b, c = ids_of(backbone)[1:]

    def alone(prompt: list[int], steps: int) -> list[torch.Tensor]:
        rows = Rows(backbone)
        out = [rows.prefill([prompt])[0][0]]
        out += [rows.decode([7], (), [[]])[0][0] for _ in range(steps)]
        return out

    expected_b, expected_c = alone(b, 73), alone(c, 70)
    batch = Rows(backbone)
    batch.prefill([ids_of(backbone)[0], b])  # a row that leaves, b
    got_b = [batch.decode([7, 7], (), [[], []])[0][1] for _ in range(3)]
    batch.keep([1])  # the first row leaves: its padding columns go
    joined = Rows(backbone)
    got_c = [joined.prefill([c])[0][0]]
    batch.merge(joined)  # rows of different lengths, left padded to one
    for _ in range(70):  # past the columns allocated ahead: the cache grows
        logits = batch.decode([7, 7], (), [[], []])[0]
        got_b.append(logits[0])
        got_c.append(logits[1])
        assert batch.cache.length == batch.mask.shape[1]
    batch.keep([1])
    assert batch.cache.length == batch.mask.shape[1] == len(c) + 70
    for got, expected in ((got_b, expected_b[1:]), (got_c, expected_c)):
        for step, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert torch.allclose(g, e, atol=1e-5, rtol=1e-5), step


@torch.no_grad()
def test_rows_leaving_and_joining_move_the_views_not_the_data_and_decode_as_alone():
    backbone = tiny("int4")
    prompts = ids_of(backbone)

    def alone(prompt: list[int], steps: int) -> list[torch.Tensor]:
        rows = Rows(backbone)
        return [rows.prefill([prompt])[0][0]] + [rows.decode([7], (), [[]])[0][0] for _ in range(steps)]

    expected = [alone(p, 9) for p in prompts] + [alone(prompts[1], 3)]
    batch = Rows(backbone)
    got = [[logits] for logits in batch.prefill(prompts)[0]] + [[]]
    live = [0, 1, 2]
    for step in range(9):
        if step == 3:  # the middle row leaves: the others are copied
            batch.keep([0, 2])
            live = [0, 2]
        if step == 6:  # then the first: the row left is a view of the same buffers
            storage = batch.cache.keys[0].untyped_storage().data_ptr()
            batch.keep([1])
            joined = Rows(backbone)  # and a shorter prompt joins into their spare rows
            got[3].append(joined.prefill([prompts[1]])[0][0])
            batch.merge(joined)
            live = [2, 3]
            assert batch.cache.keys[0].untyped_storage().data_ptr() == storage
        logits = batch.decode([7] * len(live), (), [[]] * len(live))[0]
        for i, row in enumerate(live):
            got[row].append(logits[i])
    for row, steps in enumerate((7, 4, 10, 4)):
        for g, e in zip(got[row], expected[row][:steps], strict=True):
            assert torch.allclose(g, e, atol=1e-5, rtol=1e-5), row


@torch.no_grad()
def test_a_step_with_joining_prompts_is_the_step_and_the_prefill_bit_for_bit():
    backbone = tiny("int4")
    first, second, third = ids_of(backbone)

    def running() -> Rows:
        rows = Rows(backbone)
        rows.prefill([first, second])
        rows.decode([7, 9], (), [[], []])
        return rows

    apart, joined = running(), Rows(backbone)
    expected = torch.cat([apart.decode([5, 3], (), [[], []])[0], joined.prefill([third, second])[0]])
    apart.merge(joined)
    mixed = running()
    assert mixed.mixable()
    got, joining = mixed.decode_joining([5, 3], [third, second])  # prompts of two lengths, left padded
    mixed.merge(joining)
    assert torch.equal(got, expected)
    for _ in range(3):  # the caches the two ways hold the same
        assert torch.equal(mixed.decode([4] * 4, (), [[]] * 4)[0], apart.decode([4] * 4, (), [[]] * 4)[0])


def test_the_fast_path_runs_a_half_precision_model():
    backbone = tiny("int4", dtype=torch.bfloat16)
    assert backbone.lean.kernel is None  # the step's kernel is float32: torch's ops serve
    prompts = ids_of(backbone)
    together = generate_batch(backbone, prompts, [6] * len(prompts))
    assert all(len(row) == 6 for row in together)


def test_a_row_answers_the_same_alone_and_beside_others_on_the_fast_path():
    backbone = tiny("int4")
    prompts = ids_of(backbone)
    together = generate_batch(backbone, prompts, [8] * len(prompts))
    for prompt, row in zip(prompts, together):
        assert [s.token_id for s in generate_batch(backbone, [prompt], [8])[0]] == [s.token_id for s in row]


@torch.no_grad()
def test_hooks_on_the_parts_act_and_hooks_on_a_block_send_it_to_transformers():
    backbone = tiny("int4")
    ids, mask, positions = left_padded(backbone, ids_of(backbone)[:1])
    before = forward(backbone, ids, mask, positions)
    mlp = transformer_blocks(backbone.model)[1].mlp
    handle = mlp.register_forward_hook(lambda module, args, out: out + 1.0)  # as iReVa's neurons add
    try:
        assert not torch.equal(forward(backbone, ids, mask, positions), before)
    finally:
        handle.remove()
    seen = []
    block = transformer_blocks(backbone.model)[0]
    handle = block.register_forward_pre_hook(lambda module, args, kwargs=None: seen.append(1))
    try:
        assert not backbone.lean.usable()
        forward(backbone, ids, mask, positions)  # transformers' forward: the block is called
    finally:
        handle.remove()
    assert seen and backbone.lean.usable()


def test_other_architectures_keep_transformers_forward():
    assert not LeanLlama.supports(tiny("none", kind="gpt2").model)
