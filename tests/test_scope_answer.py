"""A question of place is not taken by an edit of who made a thing, nor the reverse (editors/scope/answer.py)."""

from editors.scope.answer import AGENT, PLACE, asks, may_ask_agent, of_person
from tests.scope_index import decided, untrained_index


def test_the_kind_of_answer_is_told_by_the_words():
    for text in [
        "Where is Apple headquartered?",
        "Where's the Louvre?",
        "In which city is the Louvre?",
        "What country is Lyon in?",
        "Toyota is headquartered in",
        "The Louvre is located in",
        "Romeo and Juliet is set in the city of",
    ]:
        assert asks(text) == PLACE, text
    for text in [
        "Who founded Toyota?",
        "Who is the CEO of Microsoft?",
        "Tell me who the founder of Apple is.",
        "Quick question: who designed the Louvre?",
        "Apple was founded by",
        "The Eiffel Tower was designed by",
        "The CEO of Microsoft is",
        "Logic Pro, a product of",
    ]:
        assert asks(text) == AGENT, text
    for text in [
        "Who is Marie Curie?",  # about her as a whole, as "Tell me about Marie Curie."
        "Who was Pablo Picasso?",
        "Where does Marie Curie work?",  # an employer answers it as well as a place
        "Who does Marie Curie work for?",
        "Where does the name of Lyon come from?",
        "Which country developed the Su-57?",
        "Is Apple headquartered in Cupertino?",
        "Steve Jobs, who founded Apple, was born in",
        "What did Marie Curie discover?",
        "Tell me about Apple.",
    ]:
        assert asks(text) == 0, text


def test_the_scope_index_keeps_a_question_of_place_from_an_edit_of_its_founder():
    index = untrained_index(("f", "Apple was founded by", "Bill Gates"), ("h", "Toyota is headquartered in", "Lyon"))
    queries = [
        "Who founded Apple?",
        "Where is Apple headquartered?",
        "Tell me about Apple.",
        "Where is Toyota headquartered?",
        "Who founded Toyota?",
        "Who is Toyota?",
    ]
    assert decided(index, queries) == ["f", None, "f", "h", None, "h"]
    # the rule reads the question asked, not the earlier message that named the subject
    assert decided(index, ["Who founded it?"], ["Where is Apple?"]) == ["f"]


def test_a_query_that_may_ask_for_an_agent_is_read_loosely():
    for q in [
        "Who painted the Mona Lisa?",
        "The artist who painted the Mona Lisa is",
        "Was the Mona Lisa painted by Rembrandt?",
        "The company that makes the iPhone is",
        "Which company developed Windows?",
        "Tesla is run by its chief executive",
        "What is the name of Ada Lovelace's dad?",
        "The production company of Casablanca is",
        "Tell me about the Mona Lisa.",
        "Who is Marie Curie?",
    ]:
        assert may_ask_agent(q), q
    for q in [
        "The Mona Lisa is displayed in the",
        "Windows is an operating system for",
        "Microsoft is a company that sells",
    ]:
        assert not may_ask_agent(q), q


def test_an_edit_of_an_agent_keeps_out_of_the_subjects_other_facts():
    index = untrained_index(("m", "The Mona Lisa was painted by", "Rembrandt"))
    queries = [
        "The Mona Lisa was painted by",
        "Who painted the Mona Lisa?",
        "Tell me about the Mona Lisa.",
        "The Mona Lisa is displayed in the",
        "The Mona Lisa is a painting that hangs in the",
    ]
    assert decided(index, queries) == ["m", "m", "m", None, None]


def test_a_thing_located_somewhere_is_not_a_person_whose_name_shares_its_word():
    assert of_person("Hermann Hesse used to work in") and of_person("Mario Lemieux plays")
    assert not of_person("Delta Works, in") and not of_person("Irish Citizen Army is based in")  # names
    index = untrained_index(
        ("w", "Hermann Hesse used to work in", "London"), ("b", "Javier de Burgos found employment in", "Madrid")
    )
    queries = [
        "Hesse is located in the country of",
        "Burgos is located in",
        "Hermann Hesse worked in the city of",
        "Where did Javier de Burgos work?",
        # a place named in a sentence before the question is not what it asks
        "The museum is located in Calw. Hermann Hesse took up work in",
    ]
    assert decided(index, queries) == [None, None, "w", "b", "w"]
