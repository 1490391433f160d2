"""The scope model's training data (evaluation/training/scope_data.py): the relations written by hand
beyond PARAREL's are asked of real subjects, and a negative never asks the edit's own relation."""

from __future__ import annotations

import pytest

from evaluation.datasets import data_root
from evaluation.training import scope_data as sd

pytestmark = pytest.mark.skipif(
    not (data_root() / "pararel").exists(), reason="needs ../shared/data (PARAREL's train relations)"
)


@pytest.fixture(scope="module")
def train_units():
    par = sd.Pararel.load(0)
    return par, sd.units("train", 0, par, 2000, 0, None, 0)


def own_forms(rel: str, subj: str) -> set[str]:
    """Every text the templates ask the relation with about subj, as a negative could word it."""
    t = sd.EXTRA[rel]
    forms = [*t["cloze"], *t["questions"], *t["indirect"]]
    forms += [g for g, _, near in sd.GENERIC if rel in near]
    forms += [f"[X] {t['label']}", f"The {t['label']} of [X] is"]
    return {sd._fill(f, subj).casefold() for f in forms}


def test_every_extra_relation_is_asked_of_subjects_of_its_own_kind(train_units):
    par, units = train_units
    for rel, t in sd.EXTRA.items():
        subjects = [s for r, s in par.facts["train"] if r == rel]
        assert len(subjects) > 100, rel
        kinds = {i for i, group in enumerate(sd.SUBJECT_KINDS) if rel in group}
        assert kinds == {t["kind"]}, rel
        assert any(u.key[1] == rel for u in units), rel


def test_a_negative_never_asks_the_edits_own_relation(train_units):
    _, units = train_units
    checked = 0
    for u in units:
        if u.key[1] not in sd.EXTRA:
            continue
        own = own_forms(u.key[1], u.key[0])
        for query, kind, key in u.negatives:
            if kind == "ssubj":
                checked += 1
                assert key[1] != u.key[1] and query.casefold() not in own, (u.edit, query)
    assert checked > 200


def test_a_pararel_edit_learns_that_the_extra_relations_of_its_subject_are_others(train_units):
    _, units = train_units
    # "X is headquartered in" is not "Who founded X?": the confusion the extra relations were added for
    headquarters = [u for u in units if u.key[1] == "P159"]
    asked = {key[1] for u in headquarters for _, kind, key in u.negatives if kind == "ssubj"}
    assert {"founded_by", "chief_executive", "products", "industry"} <= asked
    assert not sd.same_scope(("Apple", "founded_by"), ("Apple", "P159"))
    assert sd.same_scope(("Apple", "founded_by"), ("Apple", "founded_by"))
    assert sd.same_scope(("Apple", "founded_by"), ("Apple", "ke12"))  # a relation not known: maybe the same
