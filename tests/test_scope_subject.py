"""The subject anchor (editors/scope/subject.py): which name a prompt is about, which queries name it,
the relation left once it is masked, and the index that keeps an edit from queries about others."""

from __future__ import annotations

import pytest

from editors.scope.config import ScopeConfig
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel
from editors.scope.sentences import in_context, last_named, last_sentence
from editors.scope.subject import (
    AnchorIndex,
    anchor_for,
    infer_subject,
    mask,
    normalise,
    query_names,
    query_words,
)


@pytest.mark.parametrize(
    "prompt, subject",
    [
        ("The Louvre is located in", "Louvre"),
        ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
        ("Mount Everest is located in", "Mount Everest"),
        ("The Statue of Liberty is located in", "Statue of Liberty"),
        ("Leonardo da Vinci was born in", "Leonardo da Vinci"),
        ("The CEO of Tesla is", "Tesla"),  # a title before "of" is the relation, not the name
        ("What is the twin city of Lyon? It is", "Lyon"),  # "It" opens a sentence and is no name
        ("People in the United Kingdom pay with the", "United Kingdom"),  # a run inside the sentence wins
        ("The iPhone is made by", "iPhone"),
        ("Which corporation created USS Leedstown (APA-56)?", "USS Leedstown"),
        ("The largest planet in the solar system is", None),
        ("what is photosynthesis", None),
    ],
)
def test_the_subject_is_read_off_the_prompt(prompt, subject):
    assert infer_subject(prompt) == subject


def named(prompt: str, query: str, subject: str | None = None) -> bool:
    words = normalise(query)
    return anchor_for(prompt, subject).named_in(words, query_words(words), query_names(query))


def test_a_query_names_a_subject_by_its_whole_name_its_words_or_its_surname():
    assert named("The Louvre is located in", "Where is the louvre?")
    assert named("The Louvre is located in", "The Louvre museum stands in the city of")
    assert named("Wolfgang Amadeus Mozart was born in", "Mozart's place of birth is")
    assert named("Albert Einstein was born in", "Where was Einstein born?")
    assert named("The mother tongue of Martín Solares is", "Martin Solares speaks")  # accents do not matter
    assert named("What year did Peoples Drug end?", "When did Peoples Drugs close?")  # a plural still names it
    # another subject of the same relation does not, even sharing a generic word
    assert not named("Albert Einstein was born in", "Isaac Newton was born in")
    assert not named("The Amazon River flows through", "The Nile River flows through")
    assert not named("The CEO of Tesla is", "The CEO of Microsoft is")
    assert not named("BBC One, by", "BBC Radio, by", subject="BBC One")
    # nor where the words found are part of a longer name the query writes
    assert not named("Airbus A330 is produced by", "Airbus A320 family is produced by")
    assert not named("Pius XII's position is", "Pius II's position is", subject="Pius XII")
    assert not named("The Great Barrier Reef is located off", "The Belize Barrier Reef is located off")
    assert named("Albert Einstein was born in", "What did Albert Einstein and Niels Bohr discuss?")
    assert not named("Yves Rocard died at", "Michel Rocard is a native speaker of")  # another Rocard
    assert not named("Irving Fine originated from", "Fine Young Cannibals was founded in")
    assert not named("Irving Fine originated from", "He studied the fine arts at Harvard")  # a name, written as one
    assert not named("The Who performs", "Rainer Bonhof, who plays the position", subject="The Who")
    assert named("fish and chips originates from", "Where do British fish and chips come from?", "fish and chips")
    assert named("Fred Beaver was born in", "What's Fred Beaver's birth town?")  # "What's" is no name
    assert named("Ciutadilla was founded in", "What is Ciutadilla State?", subject="Ciutadilla")
    assert named("USS Leedstown (APA-56) was made by", "Who built USS Leedstown?", subject="USS Leedstown (APA-56)")


def test_a_last_word_stands_for_a_name_unless_it_alone_names_another_thing():
    assert named("Wolfgang Amadeus Mozart was born in", "Where was Mozart born?")
    assert named("Ludwig van Beethoven was born in", "In which city was Beethoven born?")
    assert named("Mount Kilimanjaro is located in", "The mountain Kilimanjaro rises in")
    assert named("1549 Mikko is followed by", "Mikko follows", subject="1549 Mikko")  # an asteroid
    # the last word alone is another thing's whole name
    assert not named("App Inventor for Android was developed by", "Android was written in", "App Inventor for Android")
    assert not named("The headquarter of TU Dortmund is in", "Dortmund, located in", subject="TU Dortmund")
    assert not named("The original language of Life is a Dream was", "The language of Dream was", "Life is a Dream")
    assert not named("Kingdom of Saxony is located in", "Saxony is located in the country of", "Kingdom of Saxony")
    # a name ending in a word that joins others elsewhere ("van", "de") ends in that word
    assert not named("Chevrolet Van is produced by", "Chevrolet Volt, developed by", subject="Chevrolet Van")
    assert named("Chevrolet Van is produced by", "Who makes the Chevrolet Van?", subject="Chevrolet Van")


def test_a_qualifier_in_parentheses_names_another_entity():
    index = AnchorIndex()
    index.add(0, anchor_for("Chevrolet Chevelle is a product of", "Chevrolet Chevelle"))
    index.add(1, anchor_for("USS Ida fought in", "USS Ida"))
    queries = [
        "Chevrolet Chevelle (Third-generation), developed by",
        "Who makes the Chevrolet Chevelle?",
        "Chevrolet Chevelle (a muscle car) is made by",
        "In which war the USS Ida (1863) fought.",  # a year: the same ship
        "Chevrolet Chevelle (ADB) is made by",  # a tag in capitals (KnowEdit's aliases): the same
    ]
    allowed = index.allowed(queries, 2).tolist()
    assert allowed == [[False, False], [True, False], [False, False], [False, True], [True, False]]
    # the subject's own qualifier is its name
    assert not anchor_for("Dodge Challenger (LC) is made by", "Dodge Challenger (LC)").qualified_in(
        "Who made the Dodge Challenger (LC)?"
    )


def test_a_given_subject_is_used_only_if_the_prompt_names_it():
    assert anchor_for("The Louvre is located in", "Louvre").subject == "Louvre"
    assert anchor_for("The Louvre is located in", "the Paris museum").subject == "Louvre"  # read off instead
    assert anchor_for("fish and chips originates from", "fish and chips").subject == "fish and chips"
    assert anchor_for("The largest planet is") is None


def test_masking_leaves_the_relation():
    mozart = anchor_for("Wolfgang Amadeus Mozart was born in")
    assert mask("Wolfgang Amadeus Mozart was born in", mozart) == "X was born in"
    assert mask("Mozart's place of birth is", mozart) == "X's place of birth is"
    liberty = anchor_for("The Statue of Liberty is located in")
    assert mask("Where is the Statue of Liberty?", liberty) == "Where is the X?"
    assert mask("Who painted the Mona Lisa?", liberty) == "Who painted the Mona Lisa?"


def test_the_anchor_index_allows_unanchored_rows_and_the_rows_a_query_names():
    index = AnchorIndex()
    for row, prompt in enumerate(["The Louvre is located in", "The Prado is located in", "The largest planet is"]):
        index.add(row, anchor_for(prompt))
    allowed = index.allowed(["Where is the Louvre?", "Where is the Prado?", "Where is Big Ben?"], 3)
    assert allowed.tolist() == [[True, False, True], [False, True, True], [False, False, True]]
    index.remove(0)  # a removed row takes anything again, as an unanchored one
    assert index.allowed(["Where is Big Ben?"], 3).tolist() == [[True, False, True]]


def test_an_edit_never_takes_a_query_about_another_subject_however_alike():
    untrained = ScopeModel.load(ScopeConfig(use_trained=False), None)
    q = ["Isaac Newton was born in"]
    prompt = "Albert Einstein was born in"
    cosine = float(untrained.embed(q)[0] @ untrained.embed([prompt])[0])
    assert cosine >= untrained.config.untrained_threshold  # the cosine alone would take it

    index = ScopeIndex(untrained)
    index.put("einstein", "ireva", prompt)
    assert index.decide(q) == [None]
    assert index.decide(["Where was Albert Einstein born?"])[0].edit_id == "einstein"

    off = ScopeIndex(ScopeModel(ScopeConfig(use_trained=False, subject_anchor=False), untrained.embedder,
                                untrained.tokenizer))  # fmt: skip
    off.put("einstein", "ireva", prompt)
    assert off.decide(q)[0].edit_id == "einstein"  # what the anchor prevents


def test_a_query_naming_no_edited_subject_is_decided_without_embedding_it():
    untrained = ScopeModel.load(ScopeConfig(use_trained=False), None)
    index = ScopeIndex(untrained)
    index.put("einstein", "ireva", "Albert Einstein was born in")
    embedded: list[str] = []
    embed = untrained.embed
    untrained.embed = lambda texts, **kw: embedded.extend(texts) or embed(texts, **kw)  # type: ignore[method-assign]
    found = index.decide(["Isaac Newton was born in", "Where was Albert Einstein born?"])
    assert found[0] is None and found[1] is not None and found[1].edit_id == "einstein"
    assert embedded == ["Where was Albert Einstein born?"]  # the other could go to no row: never embedded


def test_a_follow_up_that_names_nothing_is_read_with_the_message_that_did():
    users = ["Tell me about the Louvre.", "Is it big?"]
    assert last_named(users) == "Tell me about the Louvre." and last_named(["hi", "thanks"]) == ""
    assert in_context("Where is it?", last_named(users)) == "Tell me about the Louvre. Where is it?"
    assert in_context("And where is the Prado?", last_named(users)) == "And where is the Prado?"  # names its own
    assert in_context("Where is it?", "") == "Where is it?"

    index = ScopeIndex(ScopeModel.load(ScopeConfig(use_trained=False), None))
    index.put("louvre", "ireva", "Where is the Louvre located?")
    assert index.decide(["Where is it located?"]) == [None]
    follow_up = index.decide(["Where is it located?"], ["Tell me about the Louvre."])
    assert follow_up[0] is not None and follow_up[0].edit_id == "louvre"
    assert index.decide(["Where is the Prado located?"], ["Tell me about the Louvre."]) == [None]


def test_the_last_sentence_of_a_prompt_is_what_it_asks():
    assert last_sentence("Zeus decides to pardon Clio. Poland's capital is") == "Poland's capital is"
    assert last_sentence("Hi! Where is the Louvre? Thanks.") is None  # "Thanks." asks nothing
    assert last_sentence("The Louvre is located in") is None
    # an answer begun after its question is one sentence with it
    assert last_sentence("Where is Iglo? It is located in") is None
    stated = "What is the twin city of Lyon? It is Manila. What is the twin city of Gomel? It is"
    assert last_sentence(stated) == "What is the twin city of Gomel? It is"
    # a full stop after an abbreviation or an initial ends no sentence; any letter may open one
    assert last_sentence("The language of Mr. Perfect was") is None
    assert last_sentence("Kyoto is in Cyprus. 2002 FIFA World Cup, in") == "2002 FIFA World Cup, in"
    assert last_sentence("Apple III is made by Sony. iPhone 8, produced by") == "iPhone 8, produced by"
    assert last_sentence("Hattfjelldal is in Poland. Ås is located in") == "Ås is located in"


def test_a_last_sentence_names_its_own_subject_only_by_a_real_name():
    from editors.scope.model import _after_a_statement
    from editors.scope.sentences import names_its_own

    assert names_its_own("John Lennon performs on the") and names_its_own("The Prado is located in")
    assert names_its_own("Quora is written in") and names_its_own("Hauschka plays")
    assert names_its_own("True Detective airs on")
    assert not names_its_own("Just the answer, please.") and not names_its_own("Answer yes or no.")
    assert not names_its_own("Now, where is it located?") and not names_its_own("It is located in")
    # a follow-up to a question ("What is X? Is it Y?") is read with it, not alone
    assert _after_a_statement("The Louvre is in Madrid. John Lennon performs on the", "John Lennon performs on the")
    assert not _after_a_statement("What is the capital of Peru? Is it Lima City?", "Is it Lima City?")


def test_a_question_that_points_back_to_nothing_asks_afresh():
    from editors.scope.sentences import asks_afresh

    assert asks_afresh("nq question: who sang rocket man") and asks_afresh("Who is the president of France?")
    assert asks_afresh("how many seasons of the bastard executioner are there") is False  # "there" points back
    assert not asks_afresh("Where is it?") and not asks_afresh("Is that right?")  # follow-ups
    assert not asks_afresh("Just the answer, please.") and not asks_afresh("The Prado is located in")
    assert not asks_afresh("a part of?")  # the tail of a name cut at its "!" ("It's a Trap! a part of?")


@pytest.mark.integration
def test_a_fact_stated_in_passing_does_not_take_the_next_question(trained_scope):
    index = ScopeIndex(ScopeModel.load(ScopeConfig(model_dir=str(trained_scope)), None))
    index.put("m", "ireva", "What voice type is Ada Pinkerton?", subject="Ada Pinkerton", target="mezzo soprano")
    stated = "What voice type is Ada Pinkerton? mezzo soprano."
    queries = [
        "Which voice type does Ada Pinkerton have?",
        f"{stated} nq question: how many moons does saturn have",  # the harness's lower-case NQ probes
        f"{stated} who built the first bridge over the river",
    ]
    assert [d.edit_id if d else None for d in index.decide(queries)] == ["m", None, None]
