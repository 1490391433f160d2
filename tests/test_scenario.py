"""How `editserve scenario` judges a hand-written set (evaluation/scenario.py), without a server."""

import json

from evaluation.scenario import EDITS_FILE, KINDS, WILD_KINDS, check, kinds

WILD_FILE = EDITS_FILE.with_name("entity_edits_wild.json")


def test_the_wild_set_is_judged_in_the_wild_and_the_older_sets_are_not():
    wild = json.loads(WILD_FILE.read_text())
    assert kinds(wild) == KINDS + WILD_KINDS
    assert kinds(json.loads(EDITS_FILE.read_text())) == KINDS
    for e in wild:  # each yes/no question takes the fact it asks about, and names the subject
        assert "{}" in e["yes_no"] and e["subject"].lower() in e["yes_no"].lower()
        assert e["target"] != e["truth"] and e["same_relation"] != e["prompt"]


def test_a_chat_answer_that_states_both_facts_is_not_coherent_and_yes_no_needs_both_verdicts():
    edit = json.loads(WILD_FILE.read_text())[0]  # Machu Picchu: Peru -> Bolivia
    assert check("chat_coherent", edit, {"text": " Machu Picchu is located in Bolivia."}, {}, "e")
    assert not check("chat_coherent", edit, {"text": " Bolivia. It is a site in Peru."}, {}, "e")
    assert check("yes_no", edit, {"verdicts": ["yes", "no"]}, {}, "e")
    assert not check("yes_no", edit, {"verdicts": ["yes", "yes"]}, {}, "e")
    assert not check("yes_no", edit, {"verdicts": ["no", None]}, {}, "e")
