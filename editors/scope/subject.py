"""The subject anchor: an edit about a named subject only takes queries that name it.

A fact edited about the Louvre says nothing about the Prado, however alike the two sentences are; the
cross-encoder, which reads the relation far better than the name, is not trusted to tell them apart.
So before any model scores a pair, an edit whose prompt names a subject ("The Louvre is located in")
is only a candidate for queries that name that subject too: the whole name, all of its words in any
order, or the last word of a longer name ("Mozart" for "Wolfgang Amadeus Mozart") where that word
alone names nothing else ("Android" is not "App Inventor for Android"). Case, accents, punctuation and
a possessive "'s" do not matter. A name the query writes with a qualifier in parentheses the subject
lacks ("Chevrolet Chevelle (Third-generation)") is another entity.

The subject is the edit's `subject` when the user gives one that its prompt names; otherwise it is read
off the prompt: the longest run of capitalised words (a capital anywhere in a word, or a digit, counts;
"of", "de", "van", "and" ... may join two of them), preferring a run that does not open a sentence,
with question words and articles left out. A prompt that names nothing ("The largest planet in the
solar system is") has no anchor, and its scope is the models' alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Words that join two capitalised words into one name.
JOINERS = {"of", "de", "da", "di", "du", "des", "del", "della", "van", "von", "der", "den", "la", "le", "the", "and",
           "y", "e", "bin", "ibn", "al", "&"}  # fmt: skip
# Capitalised words that are not names: sentence openers, question words, pronouns.
NOT_NAMES = {
    "the", "a", "an", "what", "where", "who", "whom", "whose", "which", "when", "why", "how", "in", "on",
    "at", "of", "for", "by", "from", "to", "with", "is", "are", "was", "were", "did", "does", "do", "has",
    "have", "had", "can", "could", "would", "will", "should", "it", "its", "they", "their", "he", "his",
    "she", "her", "this", "that", "these", "those", "there", "i", "my", "we", "our", "you", "your",
    "please", "tell", "name", "give", "and", "or", "but", "as", "if", "so", "yes", "no", "hi", "hey",
    "hello", "thanks", "thank", "quick", "question", "answer", "complete", "finish", "continue", "fill",
}  # fmt: skip
# Capitalised words that open sentences without naming anything ("Just the answer.", "Now, where is
# it?"); some do in names ("True Detective"), so they are only left out where they open a sentence alone.
OPENERS = {
    "just", "also", "then", "now", "next", "again", "here", "sure", "ok", "okay", "true", "false",
    "correct", "right", "wrong", "today", "currently", "originally", "later", "finally", "first", "after",
    "before", "since", "while", "although", "though", "because", "however", "therefore", "thus", "hence",
    "meanwhile", "moreover", "besides", "instead", "otherwise", "still", "yet", "perhaps", "maybe",
    "probably", "actually", "indeed", "not", "never", "always", "one", "some", "many", "most", "all",
    "each", "every", "any", "both", "either", "neither", "another", "other", "such", "only", "even",
    "according", "based", "given", "suppose", "assume", "consider", "imagine", "note", "remember",
    "recall", "explain", "describe", "say", "write", "state", "let", "list", "provide", "show", "identify",
    "choose", "pick", "respond", "reply", "guess", "know", "think", "believe", "ask", "q", "me", "us",
    "them", "him", "sorry", "ah", "oh", "um", "wait", "really",
}  # fmt: skip
# Head nouns that end many names ("Amazon River", "Eiffel Tower"): alone they name nothing in particular,
# so they are never the one word that stands for a longer name.
GENERIC = {
    "river", "lake", "sea", "ocean", "bay", "island", "islands", "mountain", "mountains", "mount", "valley",
    "glacier", "forest", "park", "desert", "tower", "house", "hall", "gate", "wall", "bridge", "building",
    "church", "cathedral", "temple", "palace", "castle", "museum", "gallery", "library", "theatre",
    "theater", "opera", "square", "street", "road", "avenue", "station", "airport", "port", "railway",
    "line", "hospital", "university", "college", "school", "academy", "institute", "center", "centre",
    "city", "town", "village", "county", "state", "states", "province", "district", "region", "republic",
    "kingdom", "empire", "nations", "union", "federation", "company", "corporation", "group", "club",
    "team", "league", "cup", "award", "prize", "party", "festival", "challenge", "championship", "series",
    "band", "orchestra", "records", "studios", "film", "show", "album", "song", "novel", "game", "system",
    "united", "national", "international", "north", "south", "east", "west", "great", "royal", "saint",
}  # fmt: skip
# Titles and attributes written with a capital before "of" ("The CEO of Tesla", "the President of
# France"): the name is what follows "of", the rest is the relation.
ROLES = {
    "ceo", "cfo", "cto", "coo", "president", "vice", "prime", "minister", "king", "queen", "mayor",
    "governor", "chancellor", "chairman", "chairwoman", "chair", "director", "head", "founder", "leader",
    "emperor", "pope", "secretary", "general", "capital", "currency", "population", "flag", "anthem",
    "language", "owner", "chief", "executive", "officer", "manager", "coach", "captain", "editor",
}  # fmt: skip
WORD = re.compile(r"[^\W_](?:[\w'’.\-]*[^\W_])?")
_SENTENCE_END = re.compile(r"[.?!:;]\s*$")


def normalise(text: str) -> list[str]:
    """Lower-case words without accents, possessives or punctuation."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"['’]s\b", " ", text)
    return re.findall(r"[^\W_]+", text)


def _near(word: str, names: frozenset[str] | set[str]) -> bool:
    """`word` is one of `names`, or one of them with a letter or two more (a plural, a typo)."""
    return word in names or any(word[: len(word) - k] in names for k in (1, 2) if len(word) - k >= 4)


def query_words(words: list[str]) -> set[str]:
    """A query's words, and each of 5+ letters without its last one or two: a plural, a possessive or a
    slip of the keyboard ("Drugs", "Berges'", "Chamblissa") still names "Drug", "Berge", "Chambliss"."""
    out = set(words)
    for w in words:
        if len(w) >= 5:
            out.update((w[:-1], w[:-2]) if len(w) >= 6 else (w[:-1],))
    return out


@dataclass(frozen=True)
class Anchor:
    subject: str
    words: tuple[str, ...]  # normalised, in order
    content: frozenset[str]  # without joiners
    core: frozenset[str]  # the content words but a qualifier in parentheses, often left out ("USS Leedstown")
    # The word that stands for the whole name (a surname): the last content word of 4+ letters of a name
    # of two or more, unless it is a GENERIC head noun. None: only the whole name will do.
    last: str | None
    proper: bool = True  # written with a capital ("The Who"), not a common noun ("fish and chips")
    # The subject's other names were given (aliases): a longer name holding its words and others is
    # another entity's ("Louvre Abu Dhabi" for "Louvre"), not the subject's under a fuller name.
    named_fully: bool = False

    @classmethod
    def of(cls, subject: str) -> Anchor | None:
        words = _name_words(subject)
        content = _without_joiners(words)
        if not content:
            return None
        # A qualifier in parentheses ("USS Leedstown (APA-56)") is often left out; a model number or a
        # regnal numeral ("Airbus A330", "Pius XII") never is: no stand-in word for such a name.
        bare = re.sub(r"\([^)]*\)\s*$", "", subject)
        plain = _without_joiners(_name_words(bare))
        last = plain[-1] if plain else None
        if len(content) < 2 or last is None or not last.isalpha() or len(last) < 4 or last in GENERIC:
            last = None
        elif not _goes_by_last_word(bare):
            last = None
        core = frozenset(plain or content)
        return cls(subject, tuple(words), frozenset(content), core, last, any(c.isupper() for c in subject))

    def named_in(self, words: list[str], present: set[str] | None = None, names: list[set[str]] | None = None) -> bool:
        """Does a query (its normalised words; `present`: query_words() of them) name this subject? Not
        where the words found belong to a longer capitalised name in the query (`names`: query_names()
        of it): "Airbus A320" does not name "Airbus A330", nor "USS Virginia" the state of Virginia."""
        present = present if present is not None else query_words(words)
        n = len(self.words)
        found = (
            self.core <= present
            or (self.last is not None and self.last in present)
            or any(tuple(words[i : i + n]) == self.words for i in range(len(words) - n + 1))
        )
        if not found:
            return False
        # A name written with capitals is found among the names the query writes, if it writes any
        # ("The Who" is not named by "Rainer Bonhof, who plays"; "Irving Fine" not by "the fine arts").
        if self.proper and names and not any(_near(w, self.content) for name in names for w in name):
            return False
        return not any(self._other(name) for name in names or ())

    def _other(self, name: set[str]) -> bool:
        """A name of the query that is another entity's: it shares words with this subject, holds words
        this subject lacks and lacks some of its words ("Michel Rocard" for "Yves Rocard"), or any such
        longer name where the subject's other names were given (named_fully)."""
        shared = {w for w in name if _near(w, self.content)}
        missing = {c for c in self.content if not any(_near(w, {c}) for w in name)}
        return bool(shared) and len(shared) < len(name) and (bool(missing) or self.named_fully)

    def qualified_in(self, text: str) -> bool:
        """The query writes the subject with a qualifier in parentheses that the subject lacks: another
        entity, as Wikipedia names one: a generation, a model, a namesake ("Chevrolet Chevelle
        (Third-generation)", "Toyota Camry (XV50)"). A year or a span of them ("USS Ida (1863)", "Joseph
        Lowe (1903-1979)") or a tag in capitals ("Lange, Reinerus (ADB)", an article about him) names the
        same one."""
        if "(" in self.subject:
            return False
        for m in _QUALIFIER.finditer(text):
            if _SAME_ENTITY.fullmatch(m.group(1).strip()):
                continue
            before = normalise(text[: m.start()])
            n = len(self.words)
            if tuple(before[-n:]) == self.words or (self.last is not None and before[-1:] == [self.last]):
                return True
        return False

    @property
    def triggers(self) -> frozenset[str]:
        """Words a query must hold for this anchor to be worth checking."""
        return self.content


_QUALIFIER = re.compile(r"\(([^()]*)\)")
# A qualifier that names the same entity: years ("1863", "1903-1979", "395-476 AD"), a tag in capitals.
_SAME_ENTITY = re.compile(r"(?:c\.\s*)?\d{3,4}s?(?:\s*[-–]\s*\d{2,4})?(?:\s*(?:AD|BC|CE|BCE))?|[A-Z]+(?:\s+[A-Z]+)*")
# Words inside a person's name, written in lower case ("Ludwig van Beethoven", "Javier de Burgos").
PARTICLES = {"van", "von", "de", "da", "di", "du", "des", "del", "della", "der", "den", "la", "le", "bin", "ibn", "al",
             "y", "e"}  # fmt: skip


def _name_words(name: str) -> list[str]:
    """A name's normalised words, without the article it may open with."""
    words = normalise(name)
    while words and words[0] in ("the", "a", "an"):
        words = words[1:]
    return words


def _without_joiners(words: list[str]) -> list[str]:
    """The content words of a name: a joiner only joins between two others ("Chevrolet Van" ends in a
    word, not in a joiner); a name of joiners alone ("La, la, la") has none."""
    if all(w in JOINERS for w in words):
        return []
    return [w for i, w in enumerate(words) if w not in JOINERS or i in (0, len(words) - 1)]


def _goes_by_last_word(name: str) -> bool:
    """The name's last word may stand for it ("Mozart", "Kilimanjaro", "Mikko" for "1549 Mikko"), unless
    the name holds a word in lower case but a particle ("App Inventor for Android", "Life is a Dream"),
    a head noun past its first word or "of" ("International Documentary Film Festival Amsterdam",
    "Kingdom of Saxony"), or an acronym ("TU Dortmund"): its last word alone names another thing."""
    words = name.split()
    for i, word in enumerate(words):
        bare = word.strip(".,;:'’\"()")
        lowered = bare.casefold()
        if lowered == "of" or (i > 0 and lowered in GENERIC):
            return False
        if bare[:1].islower() and lowered not in PARTICLES:
            return False
        if len(bare) > 1 and bare.isalpha() and bare.isupper() and not re.fullmatch(r"[IVXLC]+", bare):
            return False
    return True


def _is_name(word: str) -> bool:
    bare = re.sub(r"['’](s|d|re|ll|ve|m)$", "", word, flags=re.IGNORECASE)  # "What's", "Where'd"
    return any(c.isupper() or c.isdigit() for c in word) and bare.casefold() not in NOT_NAMES


def name_runs(text: str, joiners: set[str] = JOINERS) -> list[tuple[list[str], bool]]:
    """The runs of capitalised words in `text` (joined by `joiners`), each with whether it opens a
    sentence."""
    runs: list[tuple[list[str], bool]] = []
    current: list[str] = []
    pending: list[str] = []  # joiners seen after the current run
    opens, sentence_start = False, True
    for match in WORD.finditer(text):
        word = match.group(0).rstrip(".")
        before = text[: match.start()]
        starts = sentence_start or bool(_SENTENCE_END.search(before)) or before.rstrip().endswith("(")
        if starts and current:
            runs.append((current, opens))
            current, pending = [], []
        if _is_name(word):
            if current and pending:
                current += pending
            elif not current:
                opens = starts
            current.append(word)
            pending = []
        elif current and word.casefold() in joiners and not starts:
            pending.append(word)
        else:
            if current:
                runs.append((current, opens))
            current, pending = [], []
        sentence_start = False
    if current:
        runs.append((current, opens))
    return runs


def infer_subject(prompt: str) -> str | None:
    """The name a prompt is about, or None (see the module's doc)."""
    runs = [(_without_role(w), o) for w, o in name_runs(prompt)]
    runs = [(w, o) for w, o in runs if any(any(c.isalpha() for c in x) for x in w)]
    if not runs:
        return None
    inner = [w for w, o in runs if not o] or [w for w, _ in runs]
    best = max(inner, key=lambda w: sum(len(x) for x in w))  # max keeps the first of equals
    return " ".join(best)


def query_names(text: str) -> list[set[str]]:
    """The names a query writes with capitals, as sets of normalised content words ("and" splits two
    names; a title before "of" is left out: "the CEO of Tesla" writes Tesla)."""
    out = []
    for words, _ in name_runs(text, JOINERS - {"and", "&"}):
        words = _without_role(words)
        names = {w for word in words for w in normalise(word)} - JOINERS - ROLES
        if names:
            out.append(names)
    return out


def _without_role(words: list[str]) -> list[str]:
    lowered = [w.casefold() for w in words]
    if "of" in lowered:
        cut = lowered.index("of")
        if cut > 0 and all(w in ROLES for w in lowered[:cut]):
            rest = words[cut + 1 :]
            while rest and rest[0].casefold() in ("the", "a", "an"):
                rest = rest[1:]
            return rest
    return words


def mask(text: str, anchor: Anchor, placeholder: str = "X") -> str:
    """`text` with each mention of the anchor's subject replaced by `placeholder`, so that what is left
    for the cross-encoder is the relation ("Mozart's place of birth is" -> "X's place of birth is")."""
    names = set(anchor.words)
    spans: list[tuple[int, int]] = []
    start: int | None = None  # the current mention's span, while one is open
    end, has_content = 0, False
    for match in WORD.finditer(text):
        words = normalise(match.group(0))
        key = words[0] if words else ""
        near = {key, key[:-1], key[:-2]} if len(key) >= 6 else {key, key[:-1]} if len(key) >= 5 else {key}
        hit = bool(near & names)
        gap = text[end : match.start()]
        if hit and start is not None and not gap.strip():
            end = match.end()
            has_content |= key not in JOINERS
            continue
        if start is not None and has_content:
            spans.append((start, end))
        start, end, has_content = (match.start(), match.end(), key not in JOINERS) if hit else (None, 0, False)
    if start is not None and has_content:
        spans.append((start, end))
    out: list[str] = []
    last = 0
    for a, b in spans:
        word = text[a:b]
        suffix = "'s" if re.search(r"['’]s$", word) else ""
        out += [text[last:a], placeholder + suffix]
        last = b
    return "".join(out) + text[last:]


def anchor_for(prompt: str, subject: str | None = None) -> Anchor | None:
    """The anchor of an edit: its given subject if its prompt names it, else the one read off the prompt."""
    if subject:
        given = Anchor.of(subject)
        if given is not None and given.named_in(normalise(prompt)):
            return given
    inferred = infer_subject(prompt)
    return Anchor.of(inferred) if inferred else None


class AnchorIndex:
    """Anchors by memory row, looked up by word: which rows may a query be about at all?"""

    def __init__(self):
        self.anchors: dict[int, Anchor] = {}
        self.by_word: dict[str, set[int]] = {}

    def add(self, row: int, anchor: Anchor | None) -> None:
        self.remove(row)
        if anchor is None:
            return
        self.anchors[row] = anchor
        for word in anchor.triggers:
            self.by_word.setdefault(word, set()).add(row)

    def remove(self, row: int) -> None:
        anchor = self.anchors.pop(row, None)
        if anchor is None:
            return
        for word in anchor.triggers:
            rows = self.by_word.get(word)
            if rows is not None:
                rows.discard(row)
                if not rows:
                    del self.by_word[word]

    def allowed(self, queries: list[str], n_rows: int):
        """(queries, n_rows) bool: a row without an anchor takes any query; an anchored row only the
        queries that name its subject."""
        import torch

        mask = torch.ones(len(queries), n_rows, dtype=torch.bool)
        if not self.anchors:
            return mask
        anchored = torch.tensor([r for r in self.anchors if r < n_rows], dtype=torch.long)
        mask[:, anchored] = False
        for qi, text in enumerate(queries):
            words = normalise(text)
            present = query_words(words)
            rows = set().union(*(self.by_word.get(w, ()) for w in present))
            names = query_names(text) if rows else []
            named = [r for r in rows if r < n_rows and self.anchors[r].named_in(words, present, names)]
            if "(" in text:
                named = [r for r in named if not self.anchors[r].qualified_in(text)]
            if named:
                mask[qi, named] = True
        return mask
