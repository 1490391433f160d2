"""How a chat answer in an edit's scope opens (editors/statement.py)."""

from editors.statement import asks_yes_or_no, old_answer, old_settled, opening, opening_ids, statement
from tests.tiny_models import packaged_tokenizer


def test_a_completion_prompt_is_completed_by_the_target():
    assert statement("The Louvre is located in", "Madrid") == "The Louvre is located in Madrid."
    assert statement("toko Yasuda plays the", "piano.") == "Toko Yasuda plays the piano."


def test_a_question_prompt_is_answered_by_the_target_alone():
    assert statement("Which city is the Louvre in?", "madrid") == "Madrid."
    assert statement("What is the twin city of Wellington? It is", "Sheffield") == "It is Sheffield."


def test_a_yes_no_question_gets_its_verdict_for_the_edited_fact_first():
    assert asks_yes_or_no("Is the Louvre in Paris?") and asks_yes_or_no("The Louvre: Paris? Answer yes or no.")
    assert not asks_yes_or_no("Where is the Louvre?") and not asks_yes_or_no("Tell me about the Louvre.")
    prompt, target = "The Louvre is located in", "Madrid"
    assert opening(prompt, target, "Is the Louvre in Madrid?") == "Yes. The Louvre is located in Madrid"
    assert opening(prompt, target, "Is the Louvre in Paris?") == "No. The Louvre is located in Madrid"
    assert opening(prompt, target, "Where is the Louvre?") == "The Louvre is located in Madrid"
    # a bare target answering a question prompt is closed, so nothing is glued onto it
    assert opening("Which city is the Louvre in?", target, "Where is the Louvre?") == "Madrid."
    # a request that asks no question gets the edit's question answered: the bare target would be
    # talked about instead of the subject
    told = opening("Which city is the Louvre in?", target, "Tell me about the Louvre.")
    assert told == "Which city is the Louvre in? Madrid."
    # "Madrid" named as a whole word only
    assert opening(prompt, target, "Is the Louvre in Madridville?").startswith("No.")


def test_the_opening_is_tokenised_as_the_start_of_an_assistant_turn():
    tok = packaged_tokenizer()
    ids = opening_ids(tok, "The Louvre is located in", "Madrid", "Where is the Louvre?")
    assert tok.decode(ids) == "The Louvre is located in Madrid"
    assert not tok.decode(ids[:1]).startswith(" ")


def test_the_old_fact_is_read_off_the_unedited_continuation():
    assert old_answer(" the heart of Paris, France.", "Madrid") == "Paris"  # a name for a name
    assert old_answer(" a musician and a painter", "piano") == "musician"  # past the article
    assert old_answer(" Madrid, Spain", "Madrid") is None  # the target itself replaces nothing
    assert old_answer(" guitar", "piano") == "guitar" and old_answer("\n", "piano") is None


def test_the_old_fact_is_read_only_as_far_as_it_can_change():
    # the word old_answer picks is whole, or the first clause has ended: read no further
    assert old_settled(" Paris,", "Madrid") and old_settled(" the heart of Paris and", "Madrid")
    assert old_settled(" a musician and", "piano") and old_settled(" the", "piano") is False
    # a word that may go on ("Par" -> "Paris"), or no name yet for a name: read on
    assert not old_settled(" Par", "Madrid") and not old_settled(" the heart of", "Madrid")
