"""What a query asks, read off its sentences: the last one (what a completion prompt completes), whether
it names a subject of its own or asks afresh (then a fact stated before it is not what it asks), and
the earlier message of a conversation that a question naming nothing ("Where is it?") follows.
"""

from __future__ import annotations

import re

from editors.scope.subject import OPENERS, WORD, infer_subject, name_runs

# A full stop that ends an abbreviation or an initial, not a sentence.
_ABBREVIATED = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Mt|Ft|Jr|Sr|Prof|Gen|Col|Lt|Capt|Sgt|Rev|Hon|Inc|Ltd|Co|vs)|\b[A-Z])\.$"
)


def last_sentence(text: str) -> str | None:
    """The last sentence of a text of several, as written in it (None for one, or when the last is one
    word: "Thanks."), which is what a completion prompt asks to complete. An answer begun after its
    question is one sentence with it ("Where is X? It is located in")."""
    text = text.strip()
    starts = [0]  # where each sentence starts
    for m in re.finditer(r"(?<=[.!?])\s+", text):
        if not _ABBREVIATED.search(text[: m.start()]):  # "Mr. Perfect", "John F. Kennedy": one sentence
            starts.append(m.end())
    if len(text[starts[-1] :].split()) < 2:
        return None
    if len(starts) >= 2 and text[: starts[-1]].rstrip().endswith("?"):
        starts.pop()
    return text[starts[-1] :] if len(starts) >= 2 else None


def names_its_own(sentence: str) -> bool:
    """The sentence names a subject of its own ("John Lennon performs on the", "Quora is written in");
    the words that open sentences without naming anything are no names ("Just the answer, please.")."""
    runs = name_runs(sentence)
    return any(not (opens and len(words) == 1 and words[0].casefold() in OPENERS) for words, opens in runs)


# A question opens with one of these, after a label such as "Question:" if any. (One that only ends
# with "?" may be the tail of a name cut at its "!": "It's a Trap! a part of?")
_ASKS = re.compile(
    r"^(?:[\w ]{1,24}:\s*)?(?:who|whom|whose|what|which|when|where|why|how|is|are|was|were|do|does|did|can|"
    r"could|will|would|should|has|have|had)\b",
    re.IGNORECASE,
)
# Words that point back to something said before them: a question holding one is a follow-up.
_BACK = {"it", "its", "it's", "itself", "he", "him", "his", "himself", "she", "her", "hers", "herself",
         "they", "them", "their", "theirs", "themselves", "this", "that", "these", "those", "there", "here",
         "same", "former", "latter", "such", "one", "ones"}  # fmt: skip


def asks_afresh(sentence: str) -> bool:
    """The sentence is a question that points back to nothing before it ("who sang rocket man"), so
    it asks about something else than a fact stated before it ("Where is it?" points back)."""
    return bool(_ASKS.search(sentence.strip())) and not any(w.casefold() in _BACK for w in WORD.findall(sentence))


def in_context(query: str, earlier: str) -> str:
    """What the anchor and the retriever read of a query: the query, or, if it names nothing itself,
    the earlier message that did followed by it ("Tell me about the Louvre." + "Where is it?")."""
    if earlier and infer_subject(query) is None:
        return f"{earlier} {query}"
    return query


def last_named(messages: list[str]) -> str:
    """The latest of `messages` that names a subject ("" if none does)."""
    return next((m for m in reversed(messages) if infer_subject(m) is not None), "")
