"""Tiny randomly initialised backbones (GPT-2 and Llama layouts) for fast unit tests.

They use the real SmolLM2 tokenizer, so text round-trips exactly as on the packaged model; it is read
from the packaged GGUF file, so these tests depend on nothing a set-up step or a server start leaves in
the cache."""

from __future__ import annotations

import copy
import functools

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from editors.backbone import Backbone, packaged_gguf


@functools.cache
def _gguf_tokenizer():
    # Read from the packaged GGUF itself (~10 s, once per test process), not from the converted copy
    # that the first server start leaves in the cache: these tests need no set-up product.
    gguf = packaged_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.pad_token = tok.eos_token
    return tok


def packaged_tokenizer():
    """The packaged model's tokenizer (a fresh copy each call: tests may change it)."""
    return copy.deepcopy(_gguf_tokenizer())


def tiny_backbone(kind: str, tokenizer, seed: int = 0, layers: int = 3) -> Backbone:
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=layers, n_head=4)
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(kind)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, name=f"tiny-{kind}", device=torch.device("cpu"))


def generate(backbone: Backbone, ids: list[int], max_new_tokens: int = 16, steering=None):
    """A whole answer on the single-stream path (editors.generation.steps), as the server collects it."""
    from editors.generation import steps
    from editors.text_stream import collect, text_pieces

    run = steps(backbone, ids, max_new_tokens, steering)
    return collect(text_pieces(backbone.tokenizer, run, len(ids), max_new_tokens))
