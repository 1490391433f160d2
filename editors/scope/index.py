"""ScopeIndex: every edit's prompt, of every method, and the one question asked of them: which edit,
if any, is this query about?

The scope model (model.py) answers it: its embedding retrieves candidates by cosine, its
cross-encoder accepts one. A withdrawn edit keeps its row, live=False: a query it would have taken
then gets the unedited answer, as before the edit, instead of falling to the runner-up (another edit
of the same subject or question). Its row goes when a newer edit of the same prompt arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import torch

from editors.scope.answer import PERSON, asks, of_person
from editors.scope.model import ScopeModel
from editors.scope.sentences import in_context
from editors.scope.subject import AnchorIndex, anchor_for
from editors.scope.when import answers_time, asks_time, is_of_time


@dataclass(frozen=True)
class Entry:
    edit_id: str
    method: str
    prompt: str
    live: bool
    subject: str | None = None  # as the user gave it; the anchor is read off the prompt without it
    aliases: tuple[str, ...] = ()  # other names of the subject: a query naming one names the subject
    target: str | None = None  # None where not known (a withdrawn edit, loaded at start-up)
    # Read off prompt and target (when.py): it may take "When ...?" / it only takes queries of time.
    timely: bool = field(init=False)
    of_time: bool = field(init=False)
    # The kind of answer its prompt asks for (answer.py): a place, an agent, or neither; and whether its
    # relation is a person's (PERSON, a bit beside them).
    kind: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timely", answers_time(self.prompt, self.target))
        object.__setattr__(self, "of_time", is_of_time(self.prompt, self.target))
        object.__setattr__(self, "kind", asks(self.prompt) | (PERSON if of_person(self.prompt) else 0))


@dataclass(frozen=True)
class Decision:
    edit_id: str
    method: str
    score: float  # the scope model's confidence (cross-encoder probability, or cosine untrained)


class ScopeIndex:
    def __init__(self, model: ScopeModel, capacity: int = 64):
        self.model = model
        self.matrix = torch.zeros(capacity, model.dim)
        self.rows: list[Entry | None] = []  # in insertion order: among equal scores the later row wins
        self.slot: dict[str, int] = {}
        self.anchors = AnchorIndex()  # editors/scope/subject.py
        self.aliases: dict[str, tuple[re.Pattern, str]] = {}  # edit id -> (its aliases, its subject's name)
        self.alias_starts: dict[str, set[str]] = {}  # an alias's first word -> the edits giving it
        self._rules: tuple | None = None  # _row_rules(), until a change

    def __len__(self) -> int:
        return sum(1 for e in self.rows if e is not None and e.live)

    def __contains__(self, edit_id: str) -> bool:
        return edit_id in self.slot

    def entry(self, edit_id: str) -> Entry:
        row = self.rows[self.slot[edit_id]]
        if row is None:  # a slot is emptied only with its edit_id taken out of self.slot
            raise KeyError(edit_id)
        return row

    def put_many(self, entries: list[Entry], known: dict[str, torch.Tensor] | None = None) -> int:
        """Add or replace entries (a replaced one moves to the end: the newest edit of a prompt wins).
        `known` holds prompts' vectors embedded before by this model; returns how many were embedded."""
        if not entries:
            return 0
        self._rules = None
        known = known or {}
        missing = list(dict.fromkeys(e.prompt for e in entries if e.prompt not in known))
        fresh = dict(zip(missing, self.model.embed(missing))) if missing else {}
        vecs = torch.stack([known[e.prompt] if e.prompt in known else fresh[e.prompt] for e in entries])
        for e in entries:
            if e.edit_id in self.slot:
                self.remove(e.edit_id)
        start = len(self.rows)
        need = start + len(entries)
        if need > self.matrix.shape[0]:
            grown = self.matrix.new_zeros(max(need, 2 * self.matrix.shape[0]), self.matrix.shape[1])
            grown[:start] = self.matrix[:start]
            self.matrix = grown
        self.matrix[start:need] = vecs
        for i, e in enumerate(entries):
            self.rows.append(e)
            self.slot[e.edit_id] = start + i
            anchor = anchor_for(e.prompt, e.subject)
            if e.aliases and anchor is not None:
                # A query naming an alias is read with the subject's name; with its names all given,
                # any other longer name holding the subject's words is another entity.
                anchor = replace(anchor, named_fully=True)
                self.aliases[e.edit_id] = (_any_of(e.aliases), anchor.subject)
                for word in _first_words(e.aliases):
                    self.alias_starts.setdefault(word, set()).add(e.edit_id)
            self.anchors.add(start + i, anchor)
        return len(missing)

    def vectors(self) -> dict[str, torch.Tensor]:
        """Each prompt's vector, for saving (put_many's `known` at the next start)."""
        return {e.prompt: self.matrix[row].clone() for row, e in enumerate(self.rows) if e is not None}

    def put(
        self,
        edit_id: str,
        method: str,
        prompt: str,
        live: bool = True,
        subject: str | None = None,
        aliases: tuple[str, ...] = (),
        target: str | None = None,
    ) -> None:
        self.put_many([Entry(edit_id, method, prompt, live, subject, tuple(aliases), target)])

    def retire(self, edit_id: str) -> None:
        self.rows[self.slot[edit_id]] = replace(self.entry(edit_id), live=False)

    def remove(self, edit_id: str) -> None:
        row = self.slot.pop(edit_id)
        self._rules = None
        gone = self.rows[row]
        self.rows[row] = None
        self.matrix[row] = 0.0
        self.anchors.remove(row)
        had = self.aliases.pop(edit_id, None) is not None
        for word in _first_words(gone.aliases) if had and gone is not None else ():
            self.alias_starts[word].discard(edit_id)
            if not self.alias_starts[word]:
                del self.alias_starts[word]

    def unaliased(self, query: str) -> str:
        """The query with every edit's alias it names written as that edit's subject ("Where is the
        Musée du Louvre?" -> "Where is the Louvre?"): the anchor, the retriever and the cross-encoder
        then read it as they read the subject's own name."""
        # Only the edits with an alias starting with one of the query's words are tried: with thousands
        # of edits that give aliases, a query meets a handful.
        seen = set(_WORDS.findall(query.lower())) | {""}
        tried = set().union(*(self.alias_starts.get(w, ()) for w in seen))
        for edit_id in sorted(tried, key=lambda i: self.slot.get(i, -1)):  # in insertion order, as the rows
            pattern, name = self.aliases[edit_id]
            query = pattern.sub(name.replace("\\", "\\\\"), query)  # the name as it is: no group references
        return query

    def withdrawn_with_prompt(self, prompt: str) -> list[str]:
        return [e.edit_id for e in self.rows if e is not None and not e.live and e.prompt == prompt]

    def decide(self, queries: list[str], earlier: list[str] | None = None) -> list[Decision | None]:
        """For each query, the live edit whose scope holds it, or None (no edit, or a withdrawn one).
        `earlier`: per query, the conversation's last earlier user message that named a subject ("" for
        none): a question that names nothing ("Where is it?") is read with it, for retrieval and for the
        subject anchor, while the cross-encoder judges the question itself."""
        if not any(e is not None and e.live for e in self.rows):
            return [None] * len(queries)  # nothing to decide: no embedding, no cost
        n = len(self.rows)
        prompts = [e.prompt if e is not None else None for e in self.rows]
        if self.aliases:
            queries = [self.unaliased(q) for q in queries]
            earlier = [self.unaliased(e) for e in earlier] if earlier else None
        seen = [in_context(q, e) for q, e in zip(queries, earlier or [""] * len(queries))]
        # A sentence a query is read by is a suffix of it: no query asking for a time, no row to bar.
        may_take, of_time, kinds = self._row_rules()
        timely = may_take if any(asks_time(t) for t in queries + seen) else None
        found = self.model.decide(
            None,
            queries,
            self.matrix[:n],
            prompts,
            self.anchors,
            named_in=seen,
            timely=timely,
            of_time=of_time,
            kinds=kinds,
        )
        out: list[Decision | None] = []
        for hit in found:
            e = self.rows[hit[0]] if hit is not None else None
            out.append(Decision(e.edit_id, e.method, hit[1]) if hit is not None and e is not None and e.live else None)
        return out

    def _row_rules(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per row: may it take a question of time, is its edit of a time (when.py), and the kind of
        answer its prompt asks for (answer.py); None where no row has one. Kept until the rows change:
        a decision would otherwise walk every row thrice."""
        if self._rules is None:
            timely = torch.tensor([e is None or e.timely for e in self.rows], dtype=torch.bool)
            of_time = torch.tensor([e is not None and e.of_time for e in self.rows], dtype=torch.bool)
            kinds = torch.tensor([e.kind if e is not None else 0 for e in self.rows], dtype=torch.int8)
            self._rules = (timely, of_time if bool(of_time.any()) else None, kinds if bool(kinds.any()) else None)
        return self._rules

    def nearest(self, text: str, k: int) -> list[Entry]:
        """The live entries whose prompts the scope model's embedding puts nearest to `text`: the edits a
        new edit of `text` could take queries from (a preview looks at these)."""
        live = [row for row, e in enumerate(self.rows) if e is not None and e.live]
        if not live or k <= 0:
            return []
        sims = self.matrix[live] @ self.model.embed([text])[0]
        top = sims.topk(min(k, len(live))).indices.tolist()
        return [self.rows[live[i]] for i in top]


_WORDS = re.compile(r"\w+")


def _first_words(names: tuple[str, ...]) -> set[str]:
    """Each name's first word, lower-cased ("" for a name without one, tried on every query)."""
    return {next(iter(_WORDS.findall(n.lower())), "") for n in names if n.strip()}


def _any_of(names: tuple[str, ...]) -> re.Pattern:
    """Any of the names, as whole words, in any case; the longest first, so that a name inside a longer
    one is not found in its place."""
    ordered = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in ordered) + r")(?!\w)", re.IGNORECASE)
