"""Fast checks of the evaluation harness's parts on tiny random models (no packaged model weights)."""
import pytest
import torch

from editors.backbone import encode_prompt
from editors.generation import generate
from editors.ireva.config import IrevaConfig
from editors.ireva.model import IrevaEditor
from evaluation import datasets
from evaluation.run import starts_with_target, token_accuracy, unchanged_share
from evaluation.systems import CaseSet
from evaluation.teacher_forcing import greedy, next_tokens, prefix_cases
from tests.tiny_models import packaged_tokenizer, tiny_backbone

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Who wrote the novel about the whale?",
           "The capital of France is", "Q: hi\nA:"]


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_tokenizer()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("layer", [-1, 0])
def test_batched_greedy_equals_server_generation(tokenizer, kind, layer):
    backbone = tiny_backbone(kind, tokenizer, seed=4)
    editor = IrevaEditor(backbone, IrevaConfig(layer=layer))
    editor.insert("a", PROMPTS[0], "English, and she was born in Paris")
    editor.insert("b", PROMPTS[2], "Rome")
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    budgets = [9, 5, 7, 3]
    batched = greedy(backbone, ids, budgets, editor=editor, batch_size=3)
    for p, b, got in zip(PROMPTS, budgets, batched):
        assert got == generate(backbone, editor, p, max_new_tokens=b).token_ids
    editor.close()


def test_next_tokens_keeps_input_order(tokenizer):
    backbone = tiny_backbone("llama", tokenizer, seed=5)
    seqs = [encode_prompt(tokenizer, p) for p in PROMPTS] * 3
    together = next_tokens(backbone, seqs, batch_size=4)
    alone = torch.cat([next_tokens(backbone, [s]) for s in seqs])
    assert together.tolist() == alone.tolist()


def test_case_set_groups_by_record(tokenizer):
    cs = CaseSet.build(tokenizer, ["Where is it?", "Who?"], ["in Paris", "Bob"])
    assert [len(c) for c in cs.group([0] * len(cs.seqs))] == [len(prefix_cases(tokenizer, "Where is it?", "in Paris")),
                                                              len(prefix_cases(tokenizer, "Who?", "Bob"))]
    assert cs.cases_of(1) == [i for i, o in enumerate(cs.owner) if o == 1]


def test_scores():
    assert token_accuracy([[(1, 1), (2, 3)], [(4, 4)]]) == pytest.approx(2 / 3)
    assert unchanged_share([[(1, 0), (2, 0)]], [[(1, 0), (5, 0)]]) == 0.5
    assert unchanged_share([[(1, 0), (2, 0)]], [[(1, 0)]]) == 0.5  # a missing token counts as changed
    assert starts_with_target("\n Paris, France", "Paris")
    assert not starts_with_target("Par is", "Paris")


@pytest.mark.parametrize("dataset", datasets.DATASETS)
@pytest.mark.parametrize("split", datasets.SPLITS)
def test_loaders_give_complete_records(dataset, split):
    records = datasets.load(dataset, split, 50)
    assert len(records) == 50
    for r in records:
        assert r.prompt and r.target and r.paraphrase and r.loc_prompt and r.loc_answer
    assert datasets.load(dataset, split, 5) == records[:5]


def test_pararel_splits_and_preprocessing():
    acc, dev = datasets.load("pararel", "acceptance"), datasets.load("pararel", "dev")
    assert len(acc) > 9000 and len(dev) > 9000
    # relations differ; a few questions coincide across relations ("X is located in": P131 and P276)
    assert len({r.prompt for r in acc} & {r.prompt for r in dev}) < 100
    for r in acc[:200]:
        assert "[MASK]" not in r.prompt and "[X]" not in r.prompt and not r.prompt.endswith(".")
        assert r.prompt != r.paraphrase and r.subject in r.prompt
        assert r.loc_prompt.startswith(datasets.NQ_PREFIX)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_one_forward_per_pair_equals_prefix_by_prefix(tokenizer, kind):
    backbone = tiny_backbone(kind, tokenizer, seed=6)
    cs = CaseSet.build(tokenizer, PROMPTS, ["English, and French", "Herman Melville", "Paris", "hello there"])
    shared, captured = cs.plain(backbone, batch_size=3, capture=None)
    assert captured is None
    assert shared.tolist() == next_tokens(backbone, cs.seqs, batch_size=3).tolist()


@pytest.mark.parametrize("layer", [-1, 0])
def test_ireva_predictions_equal_prefix_by_prefix_with_the_adaptor(tokenizer, layer):
    from evaluation.systems import IrevaSystem

    backbone = tiny_backbone("llama", tokenizer, seed=7)
    system = IrevaSystem(backbone, batch_size=3, layer=layer)
    records = [datasets.Record(p, t, p, "Q: hi\nA:", "hello", "") for p, t in
               zip(PROMPTS[:3], ["English, and French", "Herman Melville", "Rome"])]
    system.insert_all(records)
    cs = CaseSet.build(tokenizer, PROMPTS + ["The capital of Spain is"], ["English", "Herman Melville", "Rome", "Rome"])
    got = system.predict(cs, base=None)
    want = cs.group(next_tokens(backbone, cs.seqs, batch_size=3))  # adaptor on, every prefix on its own
    assert got == want
    assert 0 < system.fired_cases < len(cs.seqs) + 1
    system.close()
