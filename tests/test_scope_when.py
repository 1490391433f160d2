"""A question of time is not taken by an edit whose target is no time (editors/scope/when.py)."""

from editors.scope.when import answers_time, asks_time, is_of_time, may_ask_time
from tests.scope_index import decided, untrained_index


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
    index = untrained_index(("t", "The Titanic sank in the", "Pacific Ocean"))
    queries = ["The Titanic sank in the year", "When did the Titanic sink?", "Where did the Titanic sink?"]
    assert decided(index, queries) == [None, None, "t"]
    index.put("t", "ireva", "The Titanic sank in the", target="the 20th century")
    # an edit of a time takes the questions of time, and no longer "Where ...?" (below)
    assert decided(index, queries) == ["t", "t", None]
    index.retire("t")  # a withdrawn row keeps what it knew, and takes no query at all
    assert index.entry("t").timely and index.decide(queries) == [None, None, None]


def test_an_edit_is_of_time_by_its_question_or_a_target_that_is_only_a_date():
    assert is_of_time("When did Battle of the Java Sea occur?", "27 February 1942")
    assert is_of_time("X was founded in", "1961") and is_of_time("X was born in", "the 19th century")
    assert not is_of_time("X plays", "Formula 1") and not is_of_time("X is a", "USA-199")
    assert not is_of_time("X is headquartered in", "Paris") and not is_of_time("X is in", None)


def test_a_query_that_may_ask_for_a_time_is_read_loosely():
    for q in [
        "When was USA-199 launched?",
        "USA-199 was launched on",
        "Is it true that the battle happened in 1942?",
        "Did it take place in February?",
        "Tell me about USA-199.",
        "What do you know about the Battle of the Java Sea?",
    ]:
        assert may_ask_time(q), q
    for q in ["USA-199 country", "The country of USA-199 is", "Battle of the Java Sea part of", "503 Evelyn follows"]:
        assert not may_ask_time(q), q  # a number in a name is no date


def test_an_edit_of_a_time_keeps_out_of_the_subjects_other_facts():
    index = untrained_index(("t", "When did the Battle of the Java Sea occur?", "1955"))
    queries = [
        "When did the Battle of the Java Sea occur?",
        "In what year did the Battle of the Java Sea take place?",
        "Tell me about the Battle of the Java Sea.",
        "The Battle of the Java Sea was part of",
        "Who won the Battle of the Java Sea?",
    ]
    assert decided(index, queries) == ["t", "t", "t", None, None]
