"""Cached greedy generation equals a full forward pass, with and without firing neurons."""
import pytest
import torch

from editors.backbone import encode_prompt
from editors.generation import generate
from editors.ireva.config import IrevaConfig
from editors.ireva.model import IrevaEditor
from evaluation.teacher_forcing import next_tokens
from tests.tiny_models import packaged_tokenizer, tiny_backbone


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_tokenizer()


def full_forward_continuation(backbone, prompt_ids, generated):
    """The token a full forward pass predicts after each prefix of the generated text."""
    return next_tokens(backbone, [prompt_ids + generated[:i] for i in range(len(generated))]).tolist()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("layer", [-1, 0])
def test_cached_generation_matches_full_forward(tokenizer, kind, layer):
    backbone = tiny_backbone(kind, tokenizer, seed=1)
    editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
    prompt = "The mother tongue of Danielle Darrieux is"
    editor.insert("lang", prompt, "English, and she was born in Paris in 1917")
    out = generate(backbone, editor, prompt, max_new_tokens=12)
    assert len(out.token_ids) == 12
    assert out.token_ids == full_forward_continuation(backbone, encode_prompt(tokenizer, prompt), out.token_ids)
    # the neurons fire along the edited continuation, and each token says so
    assert out.tokens[0] == (out.text[: len(out.tokens[0][0])], "lang")
    assert sum(owner == "lang" for _, owner in out.tokens) >= 2
    assert "".join(t for t, _ in out.tokens) == out.text


def test_unedited_prompt_generates_as_the_base_model(tokenizer):
    backbone = tiny_backbone("llama", tokenizer, seed=2)
    base = generate(backbone, None, "Who wrote the novel about the whale?", max_new_tokens=8)
    editor = IrevaEditor(backbone, IrevaConfig())
    editor.insert("x", "The capital of France is", "Rome")
    edited = generate(backbone, editor, "Who wrote the novel about the whale?", max_new_tokens=8)
    assert edited.token_ids == base.token_ids
    assert all(owner is None for _, owner in edited.tokens)
    editor.close()


def test_attribute_to_names_one_edit_for_every_token(tokenizer):
    backbone = tiny_backbone("gpt2", tokenizer, seed=3)
    out = generate(backbone, None, "Question: hello\nAnswer:", max_new_tokens=5, attribute_to="serac-1")
    assert [owner for _, owner in out.tokens] == ["serac-1"] * len(out.tokens)
