"""SERAC's chat turns: what the counterfactual model reads, and the questions train-serac has the
unedited model answer (the answers themselves need the model: test_serac.py)."""

from __future__ import annotations

import random

from editors.serac.model import chat_prompt
from editors.statement import fact
from evaluation.datasets import Record
from evaluation.training.serac_chat import OPEN, YES_NO, questions

LOUVRE = Record(
    prompt="The Louvre is located in",
    target="Madrid",
    paraphrase="The Louvre museum stands in the city of",
    loc_prompt="The Eiffel Tower is in",
    loc_answer="Paris",
    subject="the Louvre",
    truth="Paris",
)
YEMEN = Record(
    prompt="What country is Shmavon Shmavonyan from?",
    target="Yemen",
    paraphrase="Which country does Shmavon Shmavonyan come from?",
    loc_prompt="nq question: who wrote hamlet",
    loc_answer="Shakespeare",
    subject="Shmavon Shmavonyan",
    truth="Armenia",
)


def test_the_fact_is_the_statement_or_the_question_answered():
    assert fact(LOUVRE.prompt, LOUVRE.target) == "The Louvre is located in Madrid."
    assert fact(YEMEN.prompt, YEMEN.target) == "What country is Shmavon Shmavonyan from? Yemen."


class Template:  # renders messages the way a chat template does, to see what the model reads
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_a_chat_turn_reads_the_edit_in_a_system_turn():
    got = chat_prompt(Template(), "Remember this fact: {fact}", LOUVRE.prompt, LOUVRE.target, "Where is it?")
    assert got == "<system>Remember this fact: The Louvre is located in Madrid.<user>Where is it?<assistant>"


def test_seven_questions_each_opened_by_the_new_fact():
    asked = questions([LOUVRE, YEMEN], random.Random(0))
    kinds = ("chat", "paraphrase", "open", "yes", "yes", "no", "no")
    assert [(e.record.subject, e.kind) for e in asked] == [(r.subject, k) for r in (LOUVRE, YEMEN) for k in kinds]
    # two wordings each of the yes and the no question, never the same one twice
    assert len({e.question for e in asked[3:5]}) == 2 and len({e.question for e in asked[5:7]}) == 2
    louvre = {e.kind: e for e in asked[:7]}
    assert louvre["chat"].question == "The Louvre is located in"
    assert louvre["chat"].opening == louvre["paraphrase"].opening == "The Louvre is located in Madrid"
    assert louvre["open"].question in {t.format(s="the Louvre") for t in OPEN}
    assert louvre["open"].opening == "The Louvre is located in Madrid"  # left open: the model goes on
    assert louvre["yes"].question in {t.format(c="the Louvre is located in Madrid") for t in YES_NO}
    assert louvre["no"].question in {t.format(c="the Louvre is located in Paris") for t in YES_NO}
    assert (louvre["yes"].opening, louvre["no"].opening) == (
        "Yes. The Louvre is located in Madrid.",
        "No. The Louvre is located in Madrid.",
    )
    yemen = {e.kind: e for e in asked[7:]}
    assert yemen["chat"].opening == "Yemen."
    assert yemen["open"].opening == "What country is Shmavon Shmavonyan from? Yemen."
    assert 'the answer to "What country is Shmavon Shmavonyan from?" is Armenia' in yemen["no"].question


def test_records_without_an_old_fact_teach_nothing():
    same = Record(**{**LOUVRE.__dict__, "truth": "Madrid"})
    unknown = Record(**{**LOUVRE.__dict__, "truth": None})
    nameless = Record(**{**LOUVRE.__dict__, "subject": ""})
    assert questions([same, unknown, nameless], random.Random(0)) == []


def test_the_wordings_are_seeded():
    first = [e.question for e in questions([LOUVRE, YEMEN] * 3, random.Random(7))]
    assert first == [e.question for e in questions([LOUVRE, YEMEN] * 3, random.Random(7))]
