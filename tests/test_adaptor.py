"""KeyValueAdaptor and IrevaEditor on tiny random GPT-2 and Llama backbones."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from editors.backbone import encode_prompt, encode_target
from editors.ireva.config import IrevaConfig
from editors.ireva.layer import KeyValueAdaptor
from editors.ireva.model import IrevaEditor
from evaluation.teacher_forcing import next_tokens
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


def steered(editor, edit_id, prompt, prefixes):
    """Next token after the prompt + each prefix with edit_id in scope (its neurons steered in order)."""
    steering = editor.steer([edit_id] * len(prefixes))
    steering.step(prefixes)
    try:
        return next_tokens(editor.backbone, [encode_prompt(editor.backbone.tokenizer, prompt) + p for p in prefixes])
    finally:
        steering.close()


def test_only_the_neuron_each_row_names_writes():
    a = make_adaptor()
    a.add(torch.stack([unit([1, 0, 0, 0]), unit([0, 1, 0, 0])]), torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]]))
    x = torch.stack([unit([0, 1, 0, 0])] * 3)  # the input's key does not matter: the gate decides
    delta = a(x, torch.tensor([0, 1, -1]))
    assert delta.tolist() == [[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]]
    a.mask([1])  # a withdrawn neuron writes nothing even when named
    assert torch.count_nonzero(a(x, torch.tensor([1, 1, 1]))) == 0


def test_the_hook_writes_only_inside_writing_and_when_enabled():
    a = make_adaptor()
    a.add(unit([1, 0, 0, 0])[None], torch.tensor([[3.0, 0, 0, 0]]))
    x, out = torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)
    assert a.hook(None, (x,), out) is None  # no scope decision: nothing fires
    with a.writing(torch.tensor([0])):
        got = a.hook(None, (x,), out)
        assert got[0, -1].tolist() == [3.0, 0, 0, 0] and got[0, 0].tolist() == [0, 0, 0, 0]
        with a.disabled():
            assert a.hook(None, (x,), out) is None
    assert a.writes is None


def test_growth_keeps_existing_neurons():
    a = make_adaptor()
    first = a.add(unit([0, 0, 1, 0])[None], torch.ones(1, 4))
    for i in range(100):
        a.add(unit([1, 0, 0, i / 100])[None], torch.zeros(1, 4))
    assert a.size == 101 and a.keys.shape[0] >= 101
    assert a(torch.zeros(1, 4), torch.tensor(first)).tolist() == [[1.0] * 4]


def test_multi_token_target_gets_one_neuron_per_token(backbone):
    editor = IrevaEditor(backbone, IrevaConfig(layer=-1))
    prompt, target = "The mother tongue of Danielle Darrieux is", "English and 2006"
    t_ids = encode_target(backbone.tokenizer, prompt, target)
    assert len(t_ids) > 3
    editor.insert("e1", prompt, target)
    assert editor.neurons("e1") == len(t_ids)
    assert steered(editor, "e1", prompt, [t_ids[:i] for i in range(len(t_ids))]).tolist() == t_ids
    # off the target, or past its end, no neuron writes: the unedited prediction
    with editor.adaptor.disabled():
        plain = next_tokens(backbone, [encode_prompt(backbone.tokenizer, prompt) + t_ids])
    assert steered(editor, "e1", prompt, [t_ids]).tolist() == plain.tolist()


@pytest.mark.parametrize("layer", [-1, 1])
def test_edit_changes_its_scope_and_withdrawal_restores_it(backbone, layer):
    editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
    prompts = ["The capital of France is", "Who wrote the novel about the whale?"]
    before = next_tokens(backbone, [encode_prompt(backbone.tokenizer, p) for p in prompts])
    editor.insert("paris", prompts[0], "Rome")
    rome = encode_target(backbone.tokenizer, prompts[0], "Rome")[0]
    assert steered(editor, "paris", prompts[0], [[]]).tolist() == [rome]
    # outside every scope nothing writes, even with live neurons
    assert torch.equal(next_tokens(backbone, [encode_prompt(backbone.tokenizer, p) for p in prompts]), before)
    editor.withdraw("paris")
    assert editor.neurons("paris") == 0 and editor.adaptor.live_count == 0
    assert steered(editor, "paris", prompts[0], [[]]).tolist() == before[:1].tolist()


def test_state_round_trips_through_safetensors(backbone, tmp_path):
    editor = IrevaEditor(backbone, IrevaConfig())
    edits = {"a": ("The capital of France is", "Rome"), "b": ("The largest planet is", "Saturn rings")}
    for edit_id, (p, t) in edits.items():
        editor.insert(edit_id, p, t)
        save_file(editor.tensors(edit_id), tmp_path / f"{edit_id}.safetensors")
    ours = {e: steered(editor, e, p, [encode_target(backbone.tokenizer, p, t)[:1]]) for e, (p, t) in edits.items()}
    editor.close()
    restored = IrevaEditor(backbone, IrevaConfig(), centre=editor.adaptor.centre.cpu())
    errors = restored.load_many(
        [(e, p, t, load_file(tmp_path / f"{e}.safetensors")) for e, (p, t) in edits.items()]
        + [("bad", "x", "y", {"keys": torch.zeros(1, 3)})]
    )
    assert list(errors) == ["bad"]
    assert torch.equal(restored.adaptor.keys[: restored.adaptor.size], editor.adaptor.keys[: editor.adaptor.size])
    for e, (p, t) in edits.items():
        assert torch.equal(steered(restored, e, p, [encode_target(backbone.tokenizer, p, t)[:1]]), ours[e])
    restored.close()


def test_update_retrains_in_place_and_bad_targets_are_rejected(backbone):
    editor = IrevaEditor(backbone, IrevaConfig(max_target_tokens=4))
    editor.insert("a", "The capital of France is", "Rome")
    slots = list(editor.slots["a"])
    editor.update("a", "The capital of France is", "Oslo")
    assert editor.slots["a"] == slots  # same token count: same neurons, new contents
    oslo = encode_target(backbone.tokenizer, "The capital of France is", "Oslo")[0]
    assert steered(editor, "a", "The capital of France is", [[]]).tolist() == [oslo]
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
    t_ids = encode_target(backbone.tokenizer, prompt, target)
    assert steered(editor, "r", prompt, [t_ids[:i] for i in range(len(t_ids))]).tolist() == t_ids
