"""A question of time is not taken by an edit whose target is no time (editors/scope/when.py)."""

from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel
from editors.scope.when import answers_time, asks_time


def test_a_question_of_time_is_told_by_its_words():
    for q in [
        "When was Sony founded?",
        "Tell me about the Titanic. When did it sink?",
        "The Titanic sank in the year",
        "In what year was Harvard University founded?",
        "The date of birth of Marie Curie is",
        "How old is the Eiffel Tower?",
        "When's Peter Lunenfeld born?",
        "What time did Alexandre Choron die?",
        "What was the year Fritz X was put into service?",
        "What's George Shenton's birth date?",
        "What's the death date for Konrad Barde?",
        "The point in time of Suryamani massacre was what?",
    ]:
        assert asks_time(q), q
    for q in [
        "The Titanic sank in the",
        "Where did Chopin live when he was young?",  # "when" that asks nothing
        "When I was in Paris I saw the Louvre. Where is it?",
        "In 1912 the Titanic sank in the",
        "Sony is headquartered in",
    ]:
        assert not asks_time(q), q


def test_an_edit_answers_time_by_its_target_or_its_own_prompt():
    assert answers_time("Sony was founded in", "1946") and answers_time("X was born on", "the 4th of May")
    assert answers_time("X was born in", "the 19th century") and answers_time("X is open on", "Sundays")
    assert not answers_time("The Titanic sank in the", "Pacific Ocean")
    assert not answers_time("Sony is headquartered in", "Augsburg")  # "Aug" inside a name is no month
    assert answers_time("What day was Intelsat 603 launched?", "Intelsat Records")  # its prompt asks one
    assert answers_time("The Titanic sank in the", None)  # target not known (a withdrawn edit)
    # a title that reads as a time ("The Day of the Jackal") reads so in the edit's prompt too: its
    # questions stay in its scope
    assert asks_time("Who wrote The Day of the Jackal?")
    assert answers_time("The Day of the Jackal was written by", "Agatha Christie")


def test_the_scope_index_keeps_questions_of_time_from_an_edit_of_place():
    index = ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None))
    index.put("t", "ireva", "The Titanic sank in the", target="Pacific Ocean")
    queries = ["The Titanic sank in the year", "When did the Titanic sink?", "Where did the Titanic sink?"]
    assert [d.edit_id if d else None for d in index.decide(queries)] == [None, None, "t"]
    index.put("t", "ireva", "The Titanic sank in the", target="the 20th century")
    assert [d.edit_id if d else None for d in index.decide(queries)] == ["t", "t", "t"]
    index.retire("t")  # a withdrawn row keeps what it knew, and takes no query at all
    assert index.entry("t").timely and index.decide(queries) == [None, None, None]
