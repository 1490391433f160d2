"""Fast checks of the evaluation harness's parts on tiny random models (no packaged model weights)."""

import pytest
import torch

from editors.backbone import encode_prompt, padded
from evaluation import datasets
from evaluation.metrics import exact_match, starts_with_target, token_accuracy, unchanged_share
from evaluation.systems import CaseSet
from evaluation.teacher_forcing import greedy, next_tokens, prefix_cases
from tests.tiny_models import generate, packaged_tokenizer, tiny_backbone

PROMPTS = [
    "The mother tongue of Danielle Darrieux is",
    "Who wrote the novel about the whale?",
    "The capital of France is",
    "Q: hi\nA:",
]


@pytest.fixture(scope="module")
def tokenizer():
    return packaged_tokenizer()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_greedy_equals_server_generation(tokenizer, kind):
    backbone = tiny_backbone(kind, tokenizer, seed=4)
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    budgets = [9, 5, 7, 3]
    batched = greedy(backbone, ids, budgets, batch_size=3)
    for i, b, got in zip(ids, budgets, batched):
        assert got == generate(backbone, i, max_new_tokens=b).token_ids


def test_padding_left_and_right():
    ids, mask = padded([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = padded([[5, 6, 7], [8]], -100, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, -100, -100]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_next_tokens_keeps_input_order(tokenizer):
    backbone = tiny_backbone("llama", tokenizer, seed=5)
    seqs = [encode_prompt(tokenizer, p) for p in PROMPTS] * 3
    together = next_tokens(backbone, seqs, batch_size=4)
    alone = torch.cat([next_tokens(backbone, [s]) for s in seqs])
    assert together.tolist() == alone.tolist()


def test_case_set_groups_by_record(tokenizer):
    cs = CaseSet.build(tokenizer, ["Where is it?", "Who?"], ["in Paris", "Bob"])
    assert [len(c) for c in cs.group([0] * len(cs.seqs))] == [
        len(prefix_cases(tokenizer, "Where is it?", "in Paris")),
        len(prefix_cases(tokenizer, "Who?", "Bob")),
    ]
    assert cs.cases_of(1) == [i for i, o in enumerate(cs.owner) if o == 1]


def test_scores():
    assert token_accuracy([[(1, 1), (2, 3)], [(4, 4)]]) == pytest.approx(2 / 3)
    assert unchanged_share([[(1, 0), (2, 0)]], [[(1, 0), (5, 0)]]) == 0.5
    assert unchanged_share([[(1, 0), (2, 0)]], [[(1, 0)]]) == 0.5  # a missing token counts as changed
    assert starts_with_target("\n Paris, France", "Paris")
    assert not starts_with_target("Par is", "Paris")
    assert exact_match([[(1, 1), (2, 2)], [(4, 5)]]) == 0.5


@pytest.mark.parametrize(("dataset", "split"), [(d, s) for d in datasets.DATASETS for s in datasets.splits(d)])
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


def test_knowedit_reader_carries_same_subject_and_portability_probes():
    records = datasets.load("knowedit", "acceptance")
    assert len(records) == 1301
    r = records[0]
    assert (r.prompt, r.target, r.paraphrase, r.subject, r.truth) == (
        "Which family does Epaspidoceras belong to?",
        "Noctuidae",
        "What family are Epaspidoceras?",
        "Epaspidoceras",
        "Aspidoceratidae",
    )
    assert r.same_subject == (
        datasets.Probe("The taxon rank of Epaspidoceras is", "genus"),
        datasets.Probe("Epaspidoceras taxon rank", "genus"),
    )
    assert r.portability == (
        datasets.Probe("What is the common name for the family Epaspidoceras belongs to?", "Owlet moths", "Reasoning"),
    )
    assert all(len(x.same_subject) == 2 and len(x.portability) == 1 for x in records)
    assert r.loc_prompt.startswith(datasets.NQ_PREFIX) and not r.neighbourhood
    with pytest.raises(ValueError, match="dev"):
        datasets.load("knowedit", "dev")


def test_counterfact_rome_reader_fills_the_template_and_carries_neighbourhood_probes():
    records = datasets.load("counterfact-rome", "acceptance")
    assert len(records) == 500
    r = records[0]
    assert (r.prompt, r.target, r.truth, r.subject) == ("Angola is located in", "Antarctica", "Africa", "Angola")
    assert r.paraphrases[0] == r.paraphrase and len(r.paraphrases) == 2 and "Angola" in r.paraphrase
    assert len(r.neighbourhood) == 10
    assert r.neighbourhood[0] == datasets.Probe("South Africa is a part of the continent of", "Africa")
    assert (r.loc_prompt, r.loc_answer) == (r.neighbourhood[0].prompt, "Africa")
    assert all("{}" not in x.prompt and x.subject in x.prompt for x in records)
    assert datasets.splits("counterfact-rome") == ("acceptance",)


def test_zsre_acceptance_records_carry_portability():
    r = datasets.load("zsre", "acceptance", 1)[0]
    assert r.portability and r.portability[0].kind == "New Question" and r.portability[0].answer
    assert not datasets.load("zsre", "dev", 1)[0].portability


def test_bytes_per_neuron_counts_every_per_slot_buffer(tokenizer):
    from editors.ireva.model import IrevaEditor
    from evaluation.bench import neuron_bytes

    editor = IrevaEditor(tiny_backbone("llama", tokenizer, seed=2))
    for i in range(4):  # beyond the first 64 slots, so the capacity differs from the hidden width (64)
        editor.insert(f"e{i}", f"{PROMPTS[0]} ({i})", " ".join(["English"] * 20))
    adaptor = editor.adaptor
    per, rows = neuron_bytes(adaptor)
    hidden = adaptor.keys.shape[1]
    assert adaptor.keys.shape[0] != hidden
    assert rows["keys"] == rows["values"] == 4 * hidden and "centre" not in rows
    assert per == sum(rows.values()) and per >= 8 * hidden
    adaptor.keys_half = adaptor.keys.half()  # a copy kept per slot is counted too, buffer or not
    assert neuron_bytes(adaptor)[0] == per + 2 * hidden
    editor.close()


@pytest.mark.parametrize("method", ["ireva", "serac"])
def test_the_harness_scores_on_the_servers_answer_path(tokenizer, tmp_path, method):
    """EditedSystem's teacher-forced predictions, batched and one record at a time, agree with each
    other and with what the server's own generate() answers; withdrawal restores the unedited path."""
    from editors.edited import Query
    from evaluation.edited_system import EditedSystem

    backbone = tiny_backbone("llama", tokenizer, seed=5)
    records = [
        datasets.Record(p, t, p, "", "", "")
        for p, t in [(PROMPTS[0], "English and French"), (PROMPTS[1], "Herman Melville"), (PROMPTS[2], "Rome")]
    ]
    system = EditedSystem(
        backbone,
        method,
        batch_size=2,
        cache_dir=tmp_path,
        overrides={"scope.use_trained": "false", "use_adapter": "false"}
        if method == "serac"
        else {"scope.use_trained": "false"},
    )
    system.insert_all(records)
    cs = CaseSet.build(tokenizer, [r.prompt for r in records], [r.target for r in records])
    batched = system.predict(cs, None)
    for k, r in enumerate(records):
        assert system.predict_one(k, cs) == batched[k]
        served = system.model.generate(Query.prompt(r.prompt), len(cs.target_ids[k]))
        if method == "ireva":  # the neurons write the target; teacher forcing sees exactly that
            assert [p for p, _ in batched[k]] == cs.target_ids[k] == served.token_ids
        assert {owner for _, owner in served.tokens} == {system.ids[k]}
    other = CaseSet.build(tokenizer, ["Photosynthesis turns sunlight into"], ["sugar"])
    assert system.predict(other, [["base kept"]]) == [["base kept"]]  # in no edit's scope: the unedited base
    withdrawn = system.predict_withdrawn(0, cs, None)[0]
    plain = next_tokens(backbone, [cs.prompt_ids[0] + cs.target_ids[0][:i] for i in range(len(cs.target_ids[0]))])
    assert [p for p, _ in withdrawn] == plain.tolist()
    assert system.predict_one(0, cs) == batched[0]  # put back
    system.close()


def test_subject_aliasing_is_the_accuracy_of_that_kind_of_portability_probe_alone():
    from types import SimpleNamespace

    from evaluation.pipeline import _of_kind

    probes = [(0, datasets.Probe("q1", "a", "Reasoning")), (1, datasets.Probe("q2", "b", "Subject_Aliasing"))]
    cases = SimpleNamespace(probes={"portability": probes})
    edited = {"portability": [[(1, 1)], [(1, 2), (3, 3)]]}  # (predicted, expected) per token
    assert _of_kind(cases, edited, "portability", "Subject_Aliasing") == 0.5
    assert _of_kind(cases, edited, "portability", "Logical_Generalization") is None


def test_same_subject_probes_that_ask_the_edited_fact_are_counted_apart():
    from evaluation.metrics import edited_fact_split

    def record(truth):
        return datasets.Record("p", "t", "pp", "lp", "la", "s", truth=truth)

    records = [record("Brynne Chandler"), record(None)]
    probes = [
        (0, datasets.Probe("Mallory Reaves mother", " brynne  chandler")),  # the edited fact, other words
        (0, datasets.Probe("Mallory Reaves occupation", "writer")),
        (1, datasets.Probe("X sibling", "Brynne Chandler")),  # no old answer known: another fact
    ]
    base = [[(1, 0), (2, 0)], [(3, 0)], [(4, 0)]]
    edited = [[(9, 0), (2, 0)], [(3, 0)], [(7, 0)]]
    split = edited_fact_split(records, probes, base, edited)
    assert split["asks_the_edited_fact"] == {"probes": 1, "unchanged": 0.5}
    assert split["other_facts"] == {"probes": 2, "unchanged": 0.5}
