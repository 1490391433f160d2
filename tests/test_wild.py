"""The in-the-wild questions and their verdicts (evaluation/wild.py), and IKE's in-context statement of
the edit (evaluation/ike.py), on a tiny random backbone with the real tokenizer."""

import pytest

from evaluation.datasets import Record
from evaluation.ike import IkeSystem
from evaluation.metrics import WILD_KEYS
from evaluation.systems import System
from evaluation.wild import entropy, measure, verdict, yes_no_question
from tests.tiny_models import packaged_tokenizer, tiny_backbone

LOUVRE = Record("The Louvre is located in", "Madrid", "Where is the Louvre?", "q", "a", "Louvre", "Paris")


def test_yes_no_questions_from_a_completion_and_from_a_question():
    assert yes_no_question("The Louvre is located in", "Madrid") == (
        "Is it true that the Louvre is located in Madrid? Answer yes or no."
    )
    assert yes_no_question("Toko Yasuda plays the", "piano").startswith("Is it true that Toko Yasuda plays")
    assert yes_no_question("Which city is the Louvre in?", "Paris") == (
        "Which city is the Louvre in? Is it Paris? Answer yes or no."
    )


def test_the_verdict_is_the_first_word_only():
    assert verdict(" No, the Louvre is in Paris.") == "no"
    assert verdict("Yes.") == "yes"
    assert verdict(" Madrid, yes.") is None
    assert verdict("") is None


def test_matched_fluency_tells_a_shorter_answer_from_a_repetitive_one():
    from evaluation.wild import _matched_fluency

    long = "The Louvre is a museum in Paris that holds the Mona Lisa and many other paintings of note."
    short = "The Louvre is located in Madrid."
    assert entropy(short) < 0.6 * entropy(long)  # shorter reads as less fluent by the raw measure
    assert _matched_fluency([short], [long]) == pytest.approx(1.0, abs=0.15)
    assert _matched_fluency(["it is it is it is it is it is"], ["The Louvre is a museum in Paris with art."]) < 0.6


def test_entropy_is_low_for_a_text_that_repeats_itself():
    varied = "The Louvre is a museum in Madrid that holds the Mona Lisa and many other paintings."
    repeated = "it's a sport. " * 8
    assert entropy(varied) > entropy(repeated) + 1 > 1
    assert entropy("one") == 0.0


class _Recording(System):
    """Answers every chat question with a fixed text, remembering what it was asked."""

    def __init__(self, backbone, answers):
        super().__init__(backbone)
        self.answers, self.asked = answers, []

    def chat(self, questions, budgets, owners=None):
        self.asked.append((questions, budgets, owners))
        return [self.answers(q) for q in questions]


class _Leaking(_Recording):
    """Continues every plain prompt with one fixed token: the edit answers whatever comes after it."""

    def generate(self, queries, budgets, base=None, progress=None, owners=None):
        return [[5] for _ in queries]


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone("llama", packaged_tokenizer())


def test_a_system_that_knows_the_edit_scores_and_the_unedited_baseline_is_beside_it(backbone):
    def knows(q):
        if q.startswith("Is it true"):
            return " Yes, it is." if "Madrid" in q else " No, it is in Madrid."
        return " The Louvre is located in Madrid, Spain."

    def unedited(q):
        if q.startswith("Is it true"):
            return " Yes." if "Paris" in q else " No."
        return " The Louvre is located in Paris, France."

    edited, plain = _Recording(backbone, knows), _Recording(backbone, unedited)
    no_truth = Record("p", "t", "pp", "q", "a", "s", None)
    no_change = Record("Prague is a twin city of", "Prague", "pp", "q", "a", "Prague", "prague")
    wild = measure(edited, plain, [no_truth, LOUVRE, no_change], backbone.tokenizer)
    assert wild is not None and wild.judged == [1]  # without a true answer, or with the target as it: not judged
    m = wild.metrics()
    assert tuple(m) == WILD_KEYS  # in METRIC_KEYS order (evaluation/metrics.py)
    assert m["chat_coherent"] == m["open_coherent"] == m["yes_no"] == m["yes_no_unedited"] == 1.0
    assert m["fluency"] == pytest.approx(1.0, abs=0.2)
    assert m["fluency_matched"] is not None
    questions, budgets, owners = edited.asked[0]
    assert owners == [1] * 5 and questions[1] == "Tell me about Louvre." and budgets[0] >= 40
    assert questions[4] == "q"  # the out-of-scope probe, asked as a chat turn
    assert m["unrelated_same"] == 0.0  # the two systems answer it differently
    assert m["distracted_same"] == 1.0  # both continue it unedited (System.generate)

    stamped = measure(_Recording(backbone, lambda q: " Madrid."), plain, [LOUVRE], backbone.tokenizer)
    assert stamped is not None
    assert stamped.metrics()["yes_no"] == 0.0  # an answer that is not yes or no is not right
    same = measure(plain, _Recording(backbone, unedited), [LOUVRE], backbone.tokenizer)
    assert same is not None and same.metrics()["unrelated_same"] == 1.0
    leaks = measure(_Leaking(backbone, knows), plain, [LOUVRE], backbone.tokenizer)
    assert leaks is not None and leaks.metrics()["distracted_same"] == 0.0
    assert leaks.distracted == [backbone.tokenizer.decode([5])]
    said_both = measure(
        _Recording(backbone, lambda q: " Madrid, but the Louvre is in Paris."), plain, [LOUVRE], backbone.tokenizer
    )
    assert said_both is not None and said_both.metrics()["chat_coherent"] == 0.0


def test_ike_states_the_records_edit_before_the_query(backbone, monkeypatch):
    ike = IkeSystem(backbone)
    ike.insert_all([LOUVRE])
    seen = []
    plain_generate = System.generate

    def spy(self, queries, budgets, base=None, progress=None, owners=None):
        seen.extend(queries)
        return plain_generate(self, queries, budgets, base, progress)

    monkeypatch.setattr(System, "generate", spy)
    ike.chat(["Where is it?"], [2], [0])
    ike.generate(["The Louvre is in"], [2], owners=[0])
    ike.chat(["Who wrote Hamlet?"], [2])  # about no record: asked plainly
    assert "The Louvre is located in Madrid." in seen[0] and "Where is it?" in seen[0]
    assert seen[1] == "Fact: The Louvre is located in Madrid.\nThe Louvre is in"
    assert "Madrid" not in seen[2]
