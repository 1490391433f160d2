"""Weight-only quantised linear layers (editors/quant.py): what they store, that the model around them
stays float32 with its hooks, and that on the packaged model an edit acts and withdraws exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from editors import quant
from editors.backbone import transformer_blocks
from tests.tiny_models import packaged_tokenizer, tiny_backbone


def q4_1_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A weight as a GGUF Q4_1 file holds it: w = q * d + m per block of 32 inputs, each block using
    q = 0 and q = 15 (as ggml's quantiser makes them), d and m half-precision numbers."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(rows, cols // 32, 1, generator=g) * 0.01 + 0.001).half().float()
    m = (-7.5 * d + torch.randn(rows, cols // 32, 1, generator=g) * 1e-3).half().float()
    return (q * d + m).reshape(rows, cols)


def relative(y: torch.Tensor, exact: torch.Tensor) -> float:
    return float((y - exact).abs().max() / exact.abs().max())


def test_int4_packs_q4_1_blocks_without_loss_and_multiplies_in_float32():
    w = q4_1_weight(64, 128)
    layer = quant.Int4Linear(w)
    assert torch.equal(layer.weight, w)
    x = torch.randn(3, 5, 128)
    y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 64)
    assert relative(y, x @ w.T) < 1e-5  # the order of summation aside, the float32 matmul


def test_int8_keeps_each_group_within_half_a_step():
    w = torch.randn(32, 64) * torch.linspace(0.1, 10, 64)  # groups of very different sizes
    layer = quant.Int8Linear(w, bias=torch.ones(32))
    step = w.reshape(32, 2, 32).abs().amax(-1, keepdim=True) / 127
    assert ((layer.weight - w).reshape(32, 2, 32).abs() <= step * 0.51 + 1e-6).all()
    x = torch.randn(4, 64)
    assert relative(layer(x), x @ layer.weight.T + 1) < 1e-5


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 8, 13, 17, 34])
def test_the_kernels_give_the_float32_matmul_for_any_number_of_rows(rows):
    # 2 rows and more go through AMX tiles where the CPU has them (16 rows and 16 outputs a tile):
    # 88 outputs leave a part tile, 17 and 34 rows more than one tile of rows
    w = q4_1_weight(88, 256, seed=rows)
    x = torch.randn(rows, 256)
    assert relative(quant.Int4Linear(w)(x), x @ w.T) < 1e-5
    head = quant.Int8Linear(w)
    assert relative(head(x), x @ head.weight.T) < 1e-5


def test_resolve_picks_int4_on_a_cpu_and_names_the_field_when_wrong():
    assert quant.resolve("auto", torch.device("cpu")) == "int4"
    assert quant.resolve("auto", torch.device("cuda")) == "none"
    assert quant.resolve("none", torch.device("cuda")) == "none"
    with pytest.raises(ValueError, match="quant: int4 runs on a CPU"):
        quant.resolve("int4", torch.device("cuda"))
    with pytest.raises(ValueError, match="quant: 'int3'"):
        quant.resolve("int3", torch.device("cpu"))


def test_auto_runs_float32_where_the_kernels_cannot_be_built(monkeypatch):
    def no_compiler():
        raise RuntimeError("the quantised kernels (qmm.cpp) could not be built: no c++")

    monkeypatch.setattr(quant.kernels, "load", no_compiler)
    assert quant.resolve("auto", torch.device("cpu")) == "none"
    with pytest.raises(RuntimeError, match="no c\\+\\+"):  # asked for by name, it says why it cannot
        quant.quantise(nn.Linear(32, 32), "int4", [])


def test_lossless_quantises_only_the_layers_whose_weights_are_int4_groups():
    backbone = tiny_backbone("llama", packaged_tokenizer(), seed=1, layers=2)
    model = backbone.model
    blocks = transformer_blocks(model)
    gguf_like = blocks[0].mlp.down_proj
    gguf_like.weight.data = q4_1_weight(*gguf_like.weight.shape)
    ids = torch.tensor([[1, 50, 600, 7000, 42]])
    before = model(input_ids=ids).logits
    assert quant.quantise(model, "int4", blocks, lossless=True) == 1  # random weights and head stay float32
    assert isinstance(blocks[0].mlp.down_proj, quant.Int4Linear)
    assert type(blocks[0].mlp.up_proj) is nn.Linear and type(model.get_output_embeddings()) is nn.Linear
    assert relative(model(input_ids=ids).logits, before) < 1e-5


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_a_quantised_model_stays_float32_with_its_hooks(mode):
    backbone = tiny_backbone("llama", packaged_tokenizer(), seed=1, layers=2)
    model = backbone.model
    ids = torch.tensor([[1, 50, 600, 7000, 42]])
    before = model(input_ids=ids).logits
    embedding = model.get_input_embeddings().weight
    swapped = quant.quantise(model, mode, transformer_blocks(model))
    assert swapped == 2 * 7 + 1  # q, k, v, o, gate, up, down per block, and the output embedding
    head = model.get_output_embeddings()
    assert isinstance(head, quant.TiedInt8Head) and head.weight is embedding  # readers get the exact rows
    after = model(input_ids=ids).logits
    assert after.dtype == torch.float32
    assert (after.argmax(-1) == before.argmax(-1)).float().mean() >= 0.8
    proj = transformer_blocks(model)[0].self_attn.q_proj
    assert isinstance(proj, quant.QuantLinear) and (proj.in_features, proj.out_features) == (64, 64)
    handle = proj.register_forward_hook(lambda module, args, out: out * 0)  # as an adapter's hook does
    try:
        assert not torch.equal(model(input_ids=ids).logits, after)
    finally:
        handle.remove()
    assert torch.equal(model(input_ids=ids).logits, after)


def test_layers_whose_inputs_do_not_fill_whole_groups_stay_float32():
    block = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 64))  # 48 inputs: not a multiple of 32

    class Model(nn.Module):
        def get_output_embeddings(self):
            return None

    assert quant.quantise(Model(), "int4", [block]) == 1
    assert isinstance(block[0], quant.Int4Linear) and type(block[1]) is nn.Linear


@pytest.mark.integration
def test_on_the_packaged_model_an_int4_edit_acts_and_withdraws_exactly(editserve_cache, packaged_model_dir):
    from editors.backbone import load_backbone
    from editors.edited import EditedModel, Query
    from editors.ireva.model import IrevaEditor
    from editors.scope.config import ScopeConfig
    from editors.scope.index import ScopeIndex
    from editors.scope.model import ScopeModel

    backbone = load_backbone(cache_dir=editserve_cache, device=torch.device("cpu"), quant="int4")
    edited = EditedModel(
        backbone, {"ireva": IrevaEditor(backbone)}, ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None))
    )
    try:
        tok = backbone.tokenizer
        ask = Query.chat(tok, [{"role": "user", "content": "Where is the Eiffel Tower?"}])
        other = Query.chat(tok, [{"role": "user", "content": "What is the capital of Japan?"}])
        before, unrelated = edited.generate(ask, 24).text, edited.generate(other, 24).text
        assert "Rome" not in before
        edited.insert("ireva", "e1", "The Eiffel Tower is located in", "Rome")
        assert "Rome" in edited.generate(ask, 24).text
        assert edited.generate(other, 24).text == unrelated
        edited.withdraw("e1", "ireva")
        assert edited.generate(ask, 24).text == before
    finally:
        edited.close()


@pytest.mark.integration
def test_bench_quant_reports_agreement_with_float32(tmp_path, capsys, editserve_cache, packaged_model_dir):
    import json

    from evaluation import datasets, quant_bench

    if not (datasets.data_root() / "counterfact").exists():
        pytest.skip(f"no CounterFact under {datasets.data_root()}")
    argv = ["--out", str(tmp_path), "--n", "2", "--modes", "int4", "--tokens", "4", "--cache-dir", str(editserve_cache)]
    assert quant_bench.main(argv) == 0
    result = json.loads((tmp_path / "quant.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["n"] == 2 and set(result) >= {"int4"} and "int8" not in result
    shares = result["int4"]
    assert set(shares) == {"next_token", "continuation_identical", "continuation_first_4", "chat_identical"}
    assert all(0 <= v <= 1 for v in shares.values())
    assert shares["continuation_first_4"] >= shares["continuation_identical"]


def test_gpu_check_says_there_is_nothing_to_check_without_cuda(tmp_path, capsys, monkeypatch):
    from evaluation import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "gpu").exists()
    names = [name for name, _ in gpu_check.steps(tmp_path, full=True)]
    assert names == ["serving", "zsre", "counterfact"]


@pytest.mark.integration
def test_on_the_packaged_model_int4_answers_as_float32_alone_and_in_a_batch(editserve_cache, packaged_model_dir):
    """The packaged GGUF's Q4_1 blocks pack into int4 without loss and the kernels compute in float32:
    greedy answers are float32's, token for token; and a row does not see its neighbours' lengths
    (editors/decoder.py attends row by row)."""
    from editors.backbone import encode_prompt, load_backbone
    from editors.generation import generate_batch

    backbone = load_backbone(cache_dir=editserve_cache, device=torch.device("cpu"), quant="int4")
    plain = load_backbone(cache_dir=editserve_cache, device=torch.device("cpu"), quant="none")
    tok = backbone.tokenizer
    questions = ["What is the capital of Japan?", "Who wrote Hamlet?", "Tell me about the Moon.", "Hi!"]
    questions += ["Which language is spoken in Brazil?", "What is 2 + 2?", "Name a large river.", "Why?"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompts = [
        encode_prompt(tok, tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)) for c in chats
    ]
    together = generate_batch(backbone, prompts, [24] * len(prompts))
    for prompt, row in zip(prompts, together):
        alone = generate_batch(backbone, [prompt], [24])[0]
        reference = generate_batch(plain, [prompt], [24])[0]
        said = tok.decode([s.token_id for s in row])
        assert [s.token_id for s in alone] == [s.token_id for s in row], said
        assert [s.token_id for s in reference] == [s.token_id for s in row], said
