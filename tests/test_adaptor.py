"""KeyValueAdaptor and IrevaEditor on tiny random GPT-2 and Llama backbones."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from editors.backbone import encode_prompt, encode_target
from editors.ireva.config import IrevaConfig
from editors.ireva.layer import KeyValueAdaptor
from editors.ireva.model import IrevaEditor
from evaluation.teacher_forcing import next_tokens, prefix_cases
from tests.tiny_models import packaged_tokenizer, tiny_backbone


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_tokenizer()


@pytest.fixture(params=["gpt2", "llama"])
def backbone(request, tokenizer):
    return tiny_backbone(request.param, tokenizer)


def unit(v):
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm()


def make_adaptor(theta=0.8, ramp=0.1):
    return KeyValueAdaptor(4, torch.zeros(4), theta=theta, ramp=ramp)


def test_max_pooling_picks_the_best_key_and_only_it():
    a = make_adaptor()
    a.add(torch.stack([unit([1, 0, 0, 0]), unit([1, 1, 0, 0])]), torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    delta, fired = a(torch.stack([unit([1, 0.05, 0, 0]), unit([1, 0.9, 0, 0])]))
    assert fired.tolist() == [0, 1]
    # only the winner's value is added, at full strength since its cosine clears theta + ramp
    assert torch.allclose(delta, torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))


def test_margin_silences_weak_matches():
    a = make_adaptor(theta=0.8, ramp=0.1)
    a.add(unit([1, 0, 0, 0])[None], torch.tensor([[5.0, 0, 0, 0]]))
    weak = unit([1, 1, 0, 0])  # cosine 0.707 < theta
    delta, fired = a(weak[None])
    assert fired.tolist() == [-1] and torch.count_nonzero(delta) == 0
    half = unit([0.85, (1 - 0.85**2) ** 0.5, 0, 0])  # cosine 0.85: halfway up the ramp
    delta, fired = a(half[None])
    assert fired.tolist() == [0] and torch.allclose(delta, torch.tensor([[2.5, 0, 0, 0]]), atol=1e-4)


def test_discarded_neuron_never_fires_and_second_best_takes_over():
    a = make_adaptor()
    slots = a.add(torch.stack([unit([1, 0, 0, 0]), unit([1, 0.2, 0, 0])]), torch.eye(4)[:2])
    x = unit([1, 0, 0, 0])[None]
    assert a(x)[1].tolist() == [0]
    a.mask([slots[0]])
    delta, fired = a(x)
    assert fired.tolist() == [1]  # a discarded neuron does not hide the live runner-up
    assert torch.allclose(delta, torch.eye(4)[1:2])
    a.mask([slots[1]])
    assert a(x)[1].tolist() == [-1]
    assert a.live == 0


def test_withdrawn_key_keeps_its_inputs_on_the_unedited_output():
    a = make_adaptor()
    slots = a.add(torch.stack([unit([1, 0, 0, 0]), unit([1, 0.2, 0, 0])]), torch.eye(4)[:2])
    own, near_other = unit([1, 0, 0, 0])[None], unit([1, 0.25, 0, 0])[None]
    a.retire([slots[0]])
    delta, fired = a(own)
    assert fired.tolist() == [-1] and torch.count_nonzero(delta) == 0  # not the runner-up's value
    assert a(near_other)[1].tolist() == [1]  # inputs closer to the live key still get it
    assert a.live == 1
    again = a.add(unit([1, 0, 0, 0])[None], torch.eye(4)[2:3])  # the same key inserted anew wins the tie
    assert a(own)[1].tolist() == again


def test_half_precision_screening_picks_the_exact_winner():
    torch.manual_seed(0)
    a = KeyValueAdaptor(64, torch.zeros(64), theta=0.8, ramp=0.02)
    base = torch.nn.functional.normalize(torch.randn(200, 64), dim=-1)
    # clusters of near-duplicate keys (cosines ~0.999 apart), as continuation tokens of many edits are
    keys = torch.nn.functional.normalize(base.repeat_interleave(20, 0) + 0.01 * torch.randn(4000, 64), dim=-1)
    slots = a.add(keys, torch.randn(4000, 64))
    a.retire(slots[::7])
    a.mask(slots[::11])
    a.add(keys[::7][:50], torch.randn(50, 64))  # exact duplicates of withdrawn keys: the live one wins
    x = torch.cat([keys[::7][:50], keys[::13] + 0.02 * torch.randn(len(keys[::13]), 64), torch.randn(100, 64)])
    exact_score, exact_best = a.scores(x).max(dim=-1)
    score, best = a.best_match(x)
    can_fire = exact_score >= a.theta
    assert can_fire.sum() > 100 and (~can_fire).sum() > 50
    assert torch.equal(best[can_fire], exact_best[can_fire])
    assert torch.allclose(score[can_fire], exact_score[can_fire], atol=1e-6)  # summation order aside
    assert (score[~can_fire] < a.theta).all()
    assert (best[:50] >= 4000).all()


def test_growth_keeps_existing_neurons():
    a = make_adaptor()
    first = a.add(unit([0, 0, 1, 0])[None], torch.ones(1, 4))
    for i in range(100):
        a.add(unit([1, 0, 0, i / 100])[None], torch.zeros(1, 4))
    assert a.size == 101 and a.keys.shape[0] >= 101
    assert a(unit([0, 0, 1, 0])[None])[1].tolist() == first


def test_multi_token_target_gets_one_neuron_per_token(backbone):
    editor = IrevaEditor(backbone, IrevaConfig(layer=-1))
    prompt, target = "The mother tongue of Danielle Darrieux is", "English and 2006"
    t_ids = encode_target(backbone.tokenizer, prompt, target)
    assert len(t_ids) > 3
    editor.insert("e1", prompt, target)
    assert editor.neurons("e1") == len(t_ids)
    cases = prefix_cases(backbone.tokenizer, prompt, target)
    predicted = next_tokens(backbone, [ids for ids, _ in cases])
    assert predicted.tolist() == [t for _, t in cases]


@pytest.mark.parametrize("layer", [-1, 1])
def test_edit_changes_its_prompt_and_withdrawal_restores_it(backbone, layer):
    editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
    prompts = ["The capital of France is", "Who wrote the novel about the whale?"]
    editor.adaptor.enabled = False
    before = next_tokens(backbone, [encode_prompt(backbone.tokenizer, p) for p in prompts])
    editor.adaptor.enabled = True
    editor.insert("paris", prompts[0], "Rome")
    rome = encode_target(backbone.tokenizer, prompts[0], "Rome")[0]
    after = next_tokens(backbone, [encode_prompt(backbone.tokenizer, p) for p in prompts])
    assert after[0] == rome and after[1] == before[1]
    editor.withdraw("paris")
    assert torch.equal(next_tokens(backbone, [encode_prompt(backbone.tokenizer, p) for p in prompts]), before)


def test_withdrawn_edits_restore_as_withdrawn_and_reinsertion_wins(backbone):
    prompt, other = "The capital of France is", "The largest planet is"
    editor = IrevaEditor(backbone, IrevaConfig())
    seqs = [encode_prompt(backbone.tokenizer, p) for p in (prompt, other)]
    editor.adaptor.enabled = False
    before = next_tokens(backbone, seqs)
    editor.adaptor.enabled = True
    editor.insert("old", prompt, "Rome")
    editor.insert("planet", other, "Saturn")
    saved = {e: editor.tensors(e) for e in ("old", "planet")}
    editor.withdraw("old")
    editor.insert("new", prompt, "Berlin")  # same prompt again: the live key beats the withdrawn one
    berlin = encode_target(backbone.tokenizer, prompt, "Berlin")[0]
    saturn = encode_target(backbone.tokenizer, other, "Saturn")[0]
    assert next_tokens(backbone, seqs).tolist() == [berlin, saturn]
    saved["new"] = editor.tensors("new")
    editor.withdraw("new")
    assert next_tokens(backbone, seqs).tolist() == [before[0], saturn]
    editor.load("new", saved["new"])  # reinstating (a rollback) takes the withdrawn copy out
    assert next_tokens(backbone, seqs).tolist() == [berlin, saturn] and "new" not in editor.retired
    editor.withdraw("new")
    editor.adaptor.enabled = False
    restored = IrevaEditor(backbone, IrevaConfig(), centre=editor.adaptor.centre.cpu())
    for edit_id, withdrawn in (("old", True), ("planet", False), ("new", True)):
        restored.load(edit_id, saved[edit_id], withdrawn=withdrawn)
    assert next_tokens(backbone, seqs).tolist() == [before[0], saturn]
    assert restored.adaptor.live == editor.adaptor.live


def test_state_round_trips_through_safetensors(backbone, tmp_path):
    editor = IrevaEditor(backbone, IrevaConfig())
    editor.insert("a", "The capital of France is", "Rome")
    editor.insert("b", "The largest planet is", "Saturn rings")
    for edit_id in ("a", "b"):
        save_file(editor.tensors(edit_id), tmp_path / f"{edit_id}.safetensors")
    restored = IrevaEditor(backbone, IrevaConfig(), centre=editor.adaptor.centre.cpu())
    for edit_id in ("a", "b"):
        restored.load(edit_id, load_file(tmp_path / f"{edit_id}.safetensors"))
    assert torch.equal(restored.adaptor.keys[: restored.adaptor.size], editor.adaptor.keys[: editor.adaptor.size])
    seqs = [ids for p, t in [("The capital of France is", "Rome"), ("The largest planet is", "Saturn rings")]
            for ids, _ in prefix_cases(backbone.tokenizer, p, t)]
    restored.adaptor.enabled = False  # both editors hook the same MLP: let one act at a time
    ours = next_tokens(backbone, seqs)
    editor.adaptor.enabled, restored.adaptor.enabled = False, True
    assert torch.equal(next_tokens(backbone, seqs), ours)


def test_update_retrains_in_place_and_bad_targets_are_rejected(backbone):
    editor = IrevaEditor(backbone, IrevaConfig(max_target_tokens=4))
    editor.insert("a", "The capital of France is", "Rome")
    slots = list(editor.slots["a"])
    editor.update("a", "The capital of France is", "Oslo")
    assert editor.slots["a"] == slots  # same token count: same neurons, new contents
    oslo = encode_target(backbone.tokenizer, "The capital of France is", "Oslo")[0]
    assert next_tokens(backbone, [encode_prompt(backbone.tokenizer, "The capital of France is")])[0] == oslo
    with pytest.raises(ValueError, match="cap"):
        editor.insert("b", "A prompt", "one two three four five six")
    with pytest.raises(ValueError, match="nothing"):
        editor.insert("c", "A prompt", "")
    assert "b" not in editor.slots and "c" not in editor.slots


def test_retrofit_keeps_the_edit_and_pushes_keys_off_out_of_scope_inputs(backbone):
    editor = IrevaEditor(backbone, IrevaConfig(retrofit_steps=10, irr_weight=1.0))
    prompt, target = "The capital of France is", "Rome"
    plain_keys, _ = editor.build_neurons(prompt, target)
    editor.insert("r", prompt, target, retrofit=True)
    slots = editor.slots["r"]
    trained = editor.adaptor.keys[slots]
    assert torch.allclose(trained.norm(dim=-1), torch.ones(len(slots)), atol=1e-5)
    negatives = editor.negatives()[: len(editor._calibration_inputs)]
    theta = editor.adaptor.theta
    assert torch.relu(negatives @ trained.T - theta).sum() <= torch.relu(negatives @ plain_keys.T - theta).sum()
    cases = prefix_cases(backbone.tokenizer, prompt, target)
    assert next_tokens(backbone, [ids for ids, _ in cases]).tolist() == [t for _, t in cases]
