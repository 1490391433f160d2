"""A time asked for: "When was Sony founded?" is about Sony, but no edit of where Sony is can answer it.

The scope models judge a query against an edit's prompt, not its target, and "The Titanic sank in the
year" reads almost as "The Titanic sank in the": the edit of where it sank took questions of when. A
query that asks for a time in words (below) is only taken by an edit whose target could be one (a
number, a month, an era) or whose own prompt asks for one; an edit with no target known (a withdrawn
one) takes it as before.
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
