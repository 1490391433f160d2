"""Where, or who: a question of place is not answered by an edit of who made a thing, nor the reverse.

The scope models judge a query against an edit's prompt with the subject masked, and relations that
PARAREL (their training data) lacks read near any other: "Apple was founded by" took "Where is Apple
headquartered?" (Cross .999) and "Toyota is headquartered in" took "Who founded Toyota?" (.991). The
kind of answer a text asks for is read off its words, as when.py reads a question of time: a place
("Where ...?", "in which city ...", "... is located in") or an agent ("Who ...?", "... was founded
by"). A query asking for one kind goes to no edit whose prompt asks for the other; a text with no such
words asks for neither and is decided as before.

The other way round, as when.py keeps an edit of a time to queries that may ask for one, an edit that
asks for an agent only takes a query with a word of one in it (who, by, a maker's verb or noun, a role)
or one about its subject as a whole: "The Mona Lisa was painted by" had taken "The Mona Lisa is
displayed in the", and "The CEO of Microsoft is" "Microsoft is a company that sells".

A thing that "is located in" a place is no person: an edit of where Hermann Hesse worked, or Javier de
Burgos found employment, takes no "Hesse is located in the country of" nor "Burgos is located in"
(the German state, the Spanish city: one word of a person's name is another thing's whole name).

"Who is Marie Curie?" asks about her as a whole, like "Tell me about ...", and asks for no agent. A
text about work or a name asks for neither: "Where does she work?" is answered by an employer, and
"Where does the name of X come from?" by a person as often as a place.
"""

from __future__ import annotations

import re

from editors.scope.when import about_whole

PLACE, AGENT = 1, 2
PERSON = 4  # in a row's kind beside PLACE or AGENT: its prompt's relation is a person's

_PLACE_NOUN = r"(?:city|cities|country|countries|town|state|province|region|place|location|continent|county|village)"
_PLACE = re.compile(
    "|".join(
        [
            r"\bwhere\s+(?:is|was|are|were|did|does|do|can|could|would|will|has|have|had)\b",
            r"\bwhere['’]s\b",
            rf"\b(?:in|at|from)\s+(?:which|what)\s+{_PLACE_NOUN}\b",
            rf"\b(?:which|what)\s+{_PLACE_NOUN}\s+(?:is|was|are|were)\b",
            # a completion that ends where a place is to be named
            r"\b(?:located|headquartered|based|situated)\s+in\s*$",
            rf"\bin\s+the\s+{_PLACE_NOUN}\s+of\s*$",
            r"\bheadquarters\s+(?:is|are|was|were)\s+(?:located\s+)?in\s*$",
        ]
    ),
    re.IGNORECASE,
)
_MADE = (
    r"(?:founded|co-founded|established|created|developed|produced|manufactured|made|built|designed|"
    r"written|composed|directed|invented|discovered|published|owned|operated|run|led|painted|"
    r"performed|recorded|sung|authored|engineered|launched|started|formed)"
)
_ROLE = (
    r"(?:CEO|chief\s+executive|founder|co-founder|president|chairman|chairwoman|chairperson|mayor|director|"
    r"owner|author|creator|inventor|designer|architect|composer|leader|head|spouse|wife|husband|father|mother|"
    r"king|queen|prime\s+minister|governor|manager|coach|captain)"
)
# "... was founded by", "... is a product of", "The CEO of X is": a completion that ends where an agent is to be named
_AGENT_CLOZE = re.compile(
    rf"\b{_MADE}\s+by\s*$|\ba\s+product\s+of\s*$|^\W*the\s+{_ROLE}\s+of\b.*\b(?:is|was)\s*$", re.IGNORECASE
)
# An employer is where one works and who one works for; a name comes from a person or a place.
_EITHER = re.compile(r"\b(?:work|works|worked|working|employ\w*|name|named|names)\b", re.IGNORECASE)
# "Who" opening the question (or after "tell me", "do you know"), not a relative "... who ..."
_WHO = re.compile(r"(?:^|[.!?:]\s*|\b(?:me|know|wondering)\s+)(?:who|whom)\b", re.IGNORECASE)
# "Who is Marie Curie?": the rest is a name, capitalised words alone
_WHO_IS_NAME = re.compile(r"^\W*[Ww]ho\s+(?:is|was|are|were)\s+(?:(?:the\s+)?[A-Z][\w.'’-]*\s*)+[?.!]?\s*$")


def asks(text: str) -> int:
    """PLACE, AGENT, or 0: the kind of answer the text asks for, read off its words."""
    t = text.strip()
    if _EITHER.search(t):
        return 0
    if _PLACE.search(t):
        return PLACE
    if _AGENT_CLOZE.search(t):
        return AGENT
    if _WHO.search(t) and not _WHO_IS_NAME.match(t):
        return AGENT
    return 0


_AGENT_WORDS = re.compile(
    rf"\b(?:who|whom|whose|by|{_MADE}|{_ROLE}|"  # and beyond the roles and the verbs of making:
    r"paint|paints|write|writes|wrote|writer|novelist|poet|artist|painter|sculptor|singer|band|"
    r"develop|develops|developer|create|creates|found|founds|founders|design|designs|compose|composes|"
    r"direct|directs|invent|invents|build|builds|builder|produce|produces|producer|publish|publishes|publisher|"
    r"make|makes|manufacture|manufactures|manufacturer|maker|product|own|owns|runs|lead|leads|heads|chief|executive|"
    r"boss|person|woman|lady|parent|parents|child|children|son|daughter|brother|sister|partner|married|marry|"
    r"engineer|discover|discovers|discoverer|discovery|explorer|illustrate|illustrated|illustrator|"
    r"responsible|dad|mom|mum|grandfather|grandmother|uncle|aunt|sibling|siblings|cousin|"
    r"production\s+company|(?:which|what)\s+(?:company|firm|studio|label|team|group|brand))\b",
    re.IGNORECASE,
)


def may_ask_agent(query: str) -> bool:
    """The query may be answered by an agent: it has a word of one in it, or asks about its subject as
    a whole. Read loosely: a query this lets through is decided as before."""
    q = query.strip()
    return bool(_AGENT_WORDS.search(q) or about_whole(q))  # "Who is Marie Curie?" has its "who"


# Relations only a person has: where one works, was born or died, a citizenship, a tongue, a trade, a
# sport or an instrument. Read in lower case only: "Delta Works", "Irish Citizen Army" are names.
_OF_PERSON = re.compile(
    r"\b(?:work|works|worked|employ\w*|born|died|passed\s+away|lost\s+(?:their|his|her)\s+life|life\s+ended|"
    r"expired|citizen\w*|native\s+(?:language|speaker|tongue)|mother\s+tongue|speaks|spoke|speaker|occupation|"
    r"profession|expertise|speciali[sz]\w*|plays|played|performs|performing)\b"
)
_LOCATED = re.compile(r"\b(?:located|situated|headquartered|headquarters|continent)\b", re.IGNORECASE)


def of_person(prompt: str) -> bool:
    """The prompt asks a relation only a person has ("Hermann Hesse used to work in")."""
    return bool(_OF_PERSON.search(prompt))


def says_located(sentence: str) -> bool:
    """The sentence says its subject is located somewhere, as no person is ("Hesse is located in")."""
    return bool(_LOCATED.search(sentence))
