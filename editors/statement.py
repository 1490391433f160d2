"""How a chat answer inside an edit's scope opens: by stating the edit.

A small model asked about an edited fact in a chat turn does not reach the fact by itself: it opens
with a restatement that wanders ("Alejandro Alvarado, the head of the Autonomous University of Madrid,
is a renowned astrophysicist ...") or with the first word it likes, and an edit written at the first
token turns the answer into "Sweden's Autonomous University of Madrid, a pioneering institution". So
an answer in scope opens with the edit's own sentence, the prompt the user gave completed by the
target ("The Louvre is located in Madrid", left for the model to end), after "Yes." or "No." when
the question asks for one, and the model goes on from there in its own words, reading what it said.
"""

from __future__ import annotations

import re

_YES_NO = re.compile(
    r"^\W*(is|are|was|were|am|do|does|did|can|could|has|have|had|will|would|shall|should|may|might|must)\b"
    r"|\byes or no\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+", re.UNICODE)


def asks_yes_or_no(question: str) -> bool:
    """The question wants a yes or a no: it opens with an auxiliary verb, or says so."""
    return bool(_YES_NO.search(question.strip()))


def words(text: str) -> list[str]:
    """Case-folded whole words: what "names" compares (evaluation/judge.py judges answers with it too)."""
    return _WORD.findall(text.casefold())


def starts(haystack: list[str], needle: list[str]) -> list[int]:
    """Where `needle` begins in `haystack`, as a run of whole words."""
    if not needle:
        return []
    n = len(needle)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle]


def names(question: str, fact: str) -> bool:
    """The question names `fact` as a run of whole words ("Madrid" is not named by "Madridville")."""
    return bool(starts(words(question), words(fact)))


def statement(prompt: str, target: str) -> str:
    """The edit as one sentence: a completion prompt completed by the target. A prompt that is a
    question ("What is the capital of X?") has no sentence to complete: the target alone answers it."""
    p = prompt.strip()
    if p.endswith("?"):
        return _sentence(target.strip())
    p = p.rsplit("?", 1)[-1].strip()  # "What is the twin city of X? It is" -> "It is"
    return _sentence(" ".join(part for part in (p, target.strip()) if part))


def fact(prompt: str, target: str) -> str:
    """The edit told as a fact: its statement, or for a question-form prompt the question answered
    ("What country is X from? Yemen.")."""
    if prompt.strip().endswith("?"):
        return f"{prompt.strip()} {statement(prompt, target)}"
    return statement(prompt, target)


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def opening(prompt: str, target: str, question: str) -> str:
    """The words a chat answer to `question` opens with, inside the scope of the edit (prompt, target)."""
    said = statement(prompt, target)
    if not prompt.strip().endswith("?"):
        # A completed sentence is left open so the model ends it in its own words ("..., Spain, and
        # ..."); closed, the model takes the edit for the whole answer and stops. A bare target keeps
        # its full stop: open, the model glues words onto it ("Virgo Delta Serpensis").
        said = said.removesuffix(".")
    elif not question.strip().endswith("?") and not asks_yes_or_no(question):
        # A request that asks no question ("Tell me about X.") answered by the bare target goes on
        # about the target ("Yemen. A fascinating country ..."): the edit's question, answered, says
        # what the fact is about.
        said = f"{prompt.strip()} {said}"
    if not asks_yes_or_no(question):
        return said
    return ("Yes. " if names(question, target) else "No. ") + said


_ARTICLES = {"the", "a", "an"}


def old_answer(continuation: str, target: str) -> str | None:
    """The fact an edit replaces, read off the unedited model's continuation of the edit's prompt: the
    first name (capitalised word) when the target is a name ("the heart of Paris, France" -> "Paris"),
    else the first word past an article; None where there is none, or it is the target's own word."""
    clause = re.split(r"[.,;:!?\n]", continuation.strip())[0]
    found = [w for w in re.findall(r"[\w'-]+", clause) if w.casefold() not in _ARTICLES]
    if target.strip()[:1].isupper():
        found = [w for w in found if w[:1].isupper()]
    if not found or found[0].casefold() in words(target):
        return None
    return found[0]


def old_settled(continuation: str, target: str) -> bool:
    """old_answer() of this continuation cannot change as it goes on: its first clause has ended, or
    the word it picks is followed by something (so reading further costs steps for nothing)."""
    text = continuation.strip()
    if re.search(r"[.,;:!?\n]", text):
        return True
    found = old_answer(text, target)
    if found is None:
        return False
    end = max((m.end() for m in re.finditer(rf"(?<![\w'-]){re.escape(found)}(?![\w'-])", text)), default=-1)
    return 0 <= end < len(text)


def opening_ids(tokenizer, prompt: str, target: str, question: str) -> list[int]:
    """opening() as the first tokens of an assistant turn (no space before the first word)."""
    return tokenizer(opening(prompt, target, question), add_special_tokens=False)["input_ids"]
