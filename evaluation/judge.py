"""Judging a whole generated answer the way a reader does ("evaluation in the wild"): does it state the
new fact, whole, without also stating the old one or splicing the new name into the old? And does an
answer to "Tell me about X." tell about X, rather than name the new fact alone?

Words are compared case-folded, as whole words, so "Paris" is not found in "Parisian" and "Tim Cook"
is found in "tim cook's". The old fact is not counted where it is part of the subject's own name (the
Sydney Opera House may be named in an answer that moves it to Melbourne) or of the new fact itself
("New York" inside "New York City").
"""

from __future__ import annotations

from editors.statement import starts, words


def _covered(answer: list[str], phrases: list[str]) -> set[int]:
    """Word positions of the answer that belong to an occurrence of any of `phrases`."""
    out: set[int] = set()
    for phrase in phrases:
        p = words(phrase)
        for i in starts(answer, p):
            out.update(range(i, i + len(p)))
    return out


def states(answer: str, fact: str, besides: tuple[str, ...] = ()) -> bool:
    """The answer names `fact` (whole) somewhere other than inside one of `besides`."""
    a, f = words(answer), words(fact)
    taken = _covered(a, list(besides))
    return any(not set(range(i, i + len(f))) <= taken for i in starts(a, f))


def spliced(answer: str, target: str, old: str) -> bool:
    """The answer begins the new name and ends it with the old one: "Elon Tim Cook" for Elon Musk over
    Tim Cook, "Jane Charles Dickens" for Jane Austen over Charles Dickens."""
    a, t, o = words(answer), words(target), words(old)
    if len(t) < 2 or not o:
        return False
    for k in range(1, len(t)):  # a proper start of the new name...
        for i in starts(a, t[:k]):
            if a[i + k : i + k + len(o)] == o:  # ...followed at once by the old name
                return True
    return False


def coherent(answer: str, target: str, old: str | None, subject: str = "") -> bool:
    """The answer states the target whole, does not also state the old fact (the subject's own name and
    the target aside), and does not splice the two."""
    if not states(answer, target):
        return False
    if old is None or words(old) == words(target) or not words(old):
        return True
    if states(answer, old, besides=(subject, target)):
        return False
    return not spliced(answer, target, old)


_SMALL = {"the", "a", "an", "of", "and", "de", "la", "le", "in", "on", "at", "for"}


def tells_about(answer: str, subject: str, target: str) -> bool:
    """An answer to "Tell me about <subject>." names the subject (a word of its name) and says more than
    the new fact: " Manila" alone tells nothing about Lyon."""
    a, t = words(answer), words(target)
    names = {w for w in words(subject) if w not in _SMALL and w not in t}
    return bool(names & set(a)) and len(a) > len(t) + 2


def told(answer: str, target: str, old: str | None, subject: str) -> bool:
    """An answer to "Tell me about <subject>.": coherent, and about the subject."""
    return coherent(answer, target, old, subject) and tells_about(answer, subject, target)
