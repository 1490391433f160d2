"""Cached greedy generation equals a full forward pass, with and without firing neurons."""

import pytest

from editors.backbone import encode_prompt, encode_target
from editors.ireva.config import IrevaConfig
from editors.ireva.model import IrevaEditor
from evaluation.teacher_forcing import next_tokens
from tests.tiny_models import generate, packaged_tokenizer, tiny_backbone


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_tokenizer()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("layer", [-1, 0])
def test_cached_generation_matches_full_forward(tokenizer, kind, layer):
    backbone = tiny_backbone(kind, tokenizer, seed=1)
    editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
    prompt, target = "The mother tongue of Danielle Darrieux is", "English, and she was born in Paris"
    editor.insert("lang", prompt, target)
    ids = encode_prompt(tokenizer, prompt)
    out = generate(backbone, ids, max_new_tokens=12, steering=editor.steer(["lang"]))
    t_ids = encode_target(tokenizer, prompt, target)
    assert len(out.token_ids) == 12 and out.token_ids[: len(t_ids)] == t_ids
    # each prefix, run through in full with the same neuron writing at its last position
    steering = editor.steer(["lang"] * 12)
    steering.step([out.token_ids[:i] for i in range(12)])
    try:
        full = next_tokens(backbone, [ids + out.token_ids[:i] for i in range(12)]).tolist()
    finally:
        steering.close()
    assert out.token_ids == full
    # the neurons write the target, one token each, and each token says so; then the model goes on
    assert [owner for _, owner in out.tokens] == ["lang"] * len(t_ids) + [None] * (12 - len(t_ids))
    assert "".join(t for t, _ in out.tokens) == out.text


def test_outside_every_scope_generation_is_the_base_model(tokenizer):
    backbone = tiny_backbone("llama", tokenizer, seed=2)
    ids = encode_prompt(tokenizer, "Who wrote the novel about the whale?")
    base = generate(backbone, ids, max_new_tokens=8)
    editor = IrevaEditor(backbone, IrevaConfig())
    editor.insert("x", "The capital of France is", "Rome")
    edited = generate(backbone, ids, max_new_tokens=8)
    assert edited.token_ids == base.token_ids
    assert all(owner is None for _, owner in edited.tokens)
    editor.close()


def test_a_steering_that_names_one_edit_names_it_for_every_token(tokenizer):
    from editors.serac.model import AnswerSteering

    backbone = tiny_backbone("gpt2", tokenizer, seed=3)
    ids = encode_prompt(tokenizer, "Question: hello\nAnswer:")
    out = generate(backbone, ids, max_new_tokens=5, steering=AnswerSteering(["serac-1"]))
    assert [owner for _, owner in out.tokens] == ["serac-1"] * len(out.tokens)
    assert out.token_ids == generate(backbone, ids, max_new_tokens=5).token_ids
