"""iReVa's chat answers in an edit's scope on the real packaged model: the fact the edit replaced is
read off the unedited model once, and the answer does not restate it (editors/ireva/steering.py)."""

from __future__ import annotations

import pytest
import torch

from editors.edited import EditedModel, Query
from editors.ireva.model import IrevaEditor
from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(editserve_cache, packaged_model_dir):
    from editors.backbone import load_backbone

    backbone = load_backbone(cache_dir=editserve_cache, device=torch.device("cpu"))
    editor = IrevaEditor(backbone)
    edited = EditedModel(backbone, {"ireva": editor}, ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None)))
    yield edited, editor
    edited.close()


def chat(edited: EditedModel, question: str, tokens: int) -> str:
    """The greedy answer to one user message."""
    return edited.generate(Query.chat(edited.backbone.tokenizer, [{"role": "user", "content": question}]), tokens).text


@pytest.mark.integration
def test_an_answer_in_scope_does_not_restate_the_replaced_fact(model):
    edited, editor = model
    tok = edited.backbone.tokenizer
    edited.insert("ireva", "lang", "The mother tongue of Danielle Darrieux is", "English")
    assert editor.olds == {}  # an insert asks nothing more of the model
    assert {tok.decode([t]).strip() for t in editor.old("lang")} == {"French"}
    question = Query.chat(tok, [{"role": "user", "content": "What is the mother tongue of Danielle Darrieux?"}])
    said = edited.generate(question, 48).text
    assert said.startswith("The mother tongue of Danielle Darrieux is English") and "French" not in said, said
    editor.olds["lang"] = []  # the same answer without the ban restates it ("Canadian-French-American")
    assert "French" in edited.generate(question, 48).text
    edited.withdraw("lang", "ireva")
    assert "lang" not in editor.olds


@pytest.mark.integration
def test_an_alias_question_gets_the_new_fact_and_a_near_name_does_not(model):
    edited, _ = model

    def ask(question: str) -> str:
        return chat(edited, question, 24)

    near = "Where is the Eiffel Tower Restaurant?"  # another place, whose name holds the tower's
    before = ask(near)
    edited.insert("ireva", "tower", "The Eiffel Tower is located in", "Rome", aliases=("La Dame de Fer",))
    said = ask("Where is La Dame de Fer?")
    assert said.startswith("The Eiffel Tower is located in Rome"), said
    assert ask(near) == before and "Rome" not in before
    edited.withdraw("tower", "ireva")


@pytest.mark.integration
def test_an_answer_in_scope_goes_on_past_the_stated_edit(model, monkeypatch):
    from editors.ireva import steering

    edited, _ = model
    tok = edited.backbone.tokenizer

    def ask(question: str) -> str:
        return chat(edited, question, 40)

    edited.insert("ireva", "denisot", "Michel Denisot spoke the language", "Russian")
    stated = "Michel Denisot spoke the language Russian."
    said = ask("What language did Michel Denisot speak?")
    assert said.startswith(stated) and len(tok(said[len(stated) :])["input_ids"]) >= steering.OWN_TOKENS, said
    assert ask("Did Michel Denisot speak Russian?") == "Yes. " + stated  # a yes/no answer may end there
    monkeypatch.setattr(steering, "OWN_TOKENS", 0)
    assert ask("What language did Michel Denisot speak?") == stated  # left free, the model stops
    edited.withdraw("denisot", "ireva")


@pytest.mark.integration
def test_an_agent_stated_by_an_edit_is_not_made_a_possessive(model, monkeypatch):
    from editors.ireva import steering

    edited, _ = model
    edited.insert("ireva", "lisa", "The Mona Lisa was painted by", "Rembrandt")
    said = chat(edited, "Tell me about the Mona Lisa.", 24)
    assert said.startswith("The Mona Lisa was painted by Rembrandt") and "Rembrandt's" not in said, said
    monkeypatch.setattr(steering, "AGENT", -1)  # no edit names an agent: the model made Rembrandt another's
    assert chat(edited, "Tell me about the Mona Lisa.", 24).startswith("The Mona Lisa was painted by Rembrandt's")
    edited.withdraw("lisa", "ireva")
