"""The reader's judgement of a whole answer (evaluation/judge.py), on answers of the kinds the packaged model gives."""

from evaluation.judge import coherent, spliced, states, tells_about


def test_an_answer_that_states_the_new_fact_and_only_it_is_coherent():
    assert coherent(" Madrid, Spain. It is one of the largest museums in the world.", "Madrid", "Paris", "The Louvre")


def test_an_answer_that_also_states_the_old_fact_is_not():
    said = (
        " Melbourne, Australia, is the capital city of Sydney, but the Sydney Opera House is actually"
        " located in Sydney."
    )
    assert states(said, "Melbourne")
    assert not coherent(said, "Melbourne", "Sydney", "Sydney Opera House")


def test_the_old_fact_inside_the_subjects_own_name_does_not_count():
    said = " Melbourne. The Sydney Opera House moved there in the story."
    assert coherent(said, "Melbourne", "Sydney", "Sydney Opera House")


def test_the_old_fact_inside_the_new_one_does_not_count():
    assert coherent(" New York City, where it has stood since 1890.", "New York City", "New York", "the museum")


def test_a_target_begun_and_left_is_not_stated():
    assert not states(" Elvis Presley, the singer.", "Elon Musk")
    assert not coherent(" Elvis Presley, the singer.", "Elon Musk", "Tim Cook", "Apple")


def test_a_splice_of_the_new_name_into_the_old_is_not_coherent():
    assert spliced(" Elon Tim Cook is the CEO.", "Elon Musk", "Tim Cook")
    assert spliced(" Jane Charles Dickens wrote it.", "Jane Austen", "Charles Dickens")
    assert not spliced(" Elon Musk, not Tim Cook.", "Elon Musk", "Tim Cook")
    said = " It was written by Jane Austen, or as some say Jane Charles Dickens."
    assert not coherent(said, "Jane Austen", "Charles Dickens", "Pride and Prejudice")


def test_whole_words_and_case():
    assert not states(" A Parisian café.", "Paris")
    assert states(" tim cook's company", "Tim Cook")
    assert coherent(" ENGLISH, then French.", "English", None)


def test_an_answer_to_tell_me_about_x_tells_about_x():
    told = "The twin city of Lyon is Manila, a city in the Philippines and a major business hub."
    assert tells_about(told, "Lyon", "Manila")
    assert not tells_about(" Manila", "Lyon", "Manila")  # the new fact alone: nothing about Lyon
    assert not tells_about("Manila is a large city in the Philippines.", "Lyon", "Manila")
    assert tells_about("The Beatles were formed in Manchester in 1960.", "The Beatles", "Manchester")
