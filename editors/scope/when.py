"""A time asked for: "When was Sony founded?" is about Sony, but no edit of where Sony is can answer it.

The scope models judge a query against an edit's prompt, not its target, and "The Titanic sank in the
year" reads almost as "The Titanic sank in the": the edit of where it sank took questions of when. A
query that asks for a time in words (below) is only taken by an edit whose target could be one (a
number, a month, an era) or whose own prompt asks for one; an edit with no target known (a withdrawn
one) takes it as before.

The other way round, an edit of a time ("When did the Battle of the Java Sea occur?" -> 1955) took
bare labels of the subject's other facts ("Battle of the Java Sea part of", "USA-199 country"): such an
edit only takes a query with a word of time in it (a date, a verb of beginning or ending, "in" or "on"
left to complete) or one that asks about the subject as a whole ("Tell me about ...").
"""

from __future__ import annotations

import re

_UNITS = r"(?:year|years|decade|century|date|month|day|era|period|point in time)"
_ASKS = re.compile(
    "|".join(
        [
            r"\bwhen\s+(?:is|was|were|are|did|does|do|will|has|had|have|can|could)\b",  # not "when I was"
            r"\bwhen['’](?:s|d)\b",  # "When's he born?"
            r"\bwhat\s+time\s+(?:is|was|were|did|does|do)\b",
            rf"\b(?:what|which)(?:['’]s|\s+is|\s+was)\s+the\s+(?:\w+\s+)?{_UNITS}\b",  # "What was the year"
            r"\b(?:birth|death|release|founding|launch|opening|closing|exact|full)\s+(?:date|year)\b",
            r"\b(?:and|but|so)\s+when\s*\?",
            rf"\b(?:what|which)\s+{_UNITS}\b",  # "In what year was it built?"
            rf"\b(?:in|of|from|during)\s+the\s+{_UNITS}\s*[.?]?\s*$",  # a completion: "... in the year"
            rf"\b(?:the\s+)?{_UNITS}\s+(?:of|it\s+was|that|when)\b[^.?!]*[.?]?$",  # "The year of its founding is"
            r"\bhow\s+(?:long\s+ago|old)\b",
            r"\bsince\s+when\b",
        ]
    ),
    re.IGNORECASE,
)
_TIME = re.compile(
    r"\d|\b(?:january|february|march|april|may|june|july|august|september|october|november|december)\b"
    r"|\b(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\.?(?!\w)"
    r"|\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b"
    r"|\b(?:century|centuries|decade|era|age|period|dynasty|bc|bce|ad|ce|today|yesterday|ago)\b",
    re.IGNORECASE,
)


def asks_time(query: str) -> bool:
    """The query asks in words for a time: a year, a date, a century, "when"."""
    return bool(_ASKS.search(query.strip()))


def answers_time(prompt: str, target: str | None) -> bool:
    """The edit could answer a question of time: its prompt asks for one (whatever the target says), or
    its target could be one, or is not known."""
    return target is None or asks_time(prompt) or bool(_TIME.search(target))


# Words that may ask for a time or name one: a query holding none is not answered by a date.
_TIMELY_WORDS = re.compile(
    r"\b(?:when|while|time|times|year|years|yearly|date|dates|dated|day|days|month|months|week|century|"
    r"centuries|decade|decades|era|period|age|aged|old|ago|since|until|till|before|after|during|first|last|"
    r"final|born|birth|birthday|died|die|dies|death|founded|found|founding|foundation|established|"
    r"establishment|inception|created|creation|formed|formation|launched|launch|discovered|discovery|opened|"
    r"open|opening|closed|closure|began|begun|begin|beginning|start|started|starts|end|ended|ends|ending|"
    r"ceased|cease|dissolved|dissolution|abolished|occur|occurred|occurs|happen|happened|took|take|place|"
    r"released|release|published|publication|premiered|premiere|debut|debuted|introduced|introduction|"
    r"commissioned|service|completed|completion|built|construction|constructed|made|exist|existed|"
    r"existence|used|use|retired|retirement|elected|inaugurated|aired|broadcast|crashed|sank|sunk|signed|"
    r"held|fought)\b"
    r"|\b(?:in|on|around|circa)\s*$",  # a completion a date may end: "X was launched on"
    re.IGNORECASE,
)
_WHOLE = re.compile(
    r"^\W*(?:tell\s+me\s+(?:\w+\s+)?about|what\s+(?:can|do)\s+you\s+(?:tell\s+me|know)\s+about|"
    r"give\s+me\s+an?\s+\w+\s+of|describe|talk\s+about|explain)",
    re.IGNORECASE,
)
_ONLY_TIME = re.compile(
    r"(?:(?:the|of|in|on|around|circa|about|early|late|mid|\d+(?:st|nd|rd|th)?|"
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|century|centuries|decade|bc|bce|ad|ce|s)[\s.,'/-]*)+",
    re.IGNORECASE,
)


def is_of_time(prompt: str, target: str | None) -> bool:
    """The edit is of a time: its prompt asks for one in words, or its target is a date and nothing
    else ("1961", "27 February 1942", "the 19th century")."""
    if asks_time(prompt):
        return True
    t = (target or "").strip()
    return bool(t) and any(c.isdigit() for c in t) and _ONLY_TIME.fullmatch(t) is not None


def may_ask_time(query: str) -> bool:
    """The query may be answered by a date: it has a word of time in it, leaves "in", "on" … to
    complete, or asks about its subject as a whole. Read loosely: a query this lets through is decided
    as before."""
    q = query.strip()
    return bool(_TIMELY_WORDS.search(q) or about_whole(q) or _TIME.search(_no_digits(q)))


def about_whole(query: str) -> bool:
    """The query asks about its subject as a whole ("Tell me about ...", "Describe ...")."""
    return bool(_WHOLE.search(query))


def _no_digits(text: str) -> str:
    # a number in a name ("USA-199", "503 Evelyn") is no time: months and eras still count
    return re.sub(r"\d", "", text)
