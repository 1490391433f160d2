"""The evaluation sets of the scope model (dev: thresholds; test: the held-out table): a memory of
edits as a server holds them, one per subject, and queries of every kind with the row that should
take them, built from the split's units (scope_data.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from editors.scope.subject import AnchorIndex, anchor_for
from evaluation.training import scope_data as sd
from evaluation.training.scope_data import Key, Pararel


@dataclass
class EvalSet:
    """A memory of edits, as a server would hold them, and queries with the row that should take them."""

    memory: list[str]
    keys: list[Key]
    queries: list[tuple[str, str, int | None, str]]  # (text, kind, right row or None, source)

    def anchors(self) -> AnchorIndex:
        """The memory's subject anchors, as a server holds them for edits given their subject."""
        index = AnchorIndex()
        for row, (prompt, key) in enumerate(zip(self.memory, self.keys)):
            index.add(row, anchor_for(prompt, key[0]))
        return index


IN_KINDS = ("paraphrase", "question", "chat", "keyword", "yesno", "open")
OUT_KINDS = ("srel", "ssubj", "nq")


def eval_set(
    split: str, seed: int, par: Pararel, pararel_n: int, cf_n: int, per_kind: int, limit: int | None = None
) -> EvalSet:
    rng = random.Random(f"{seed}:{split}:queries")
    memory, keys, row_of = [], [], {}
    by_kind: dict[str, dict[str, list]] = {}
    us, subjects = [], set()
    # One edit per subject: the sets overlap (CounterFact and PARAREL share T-REx facts), and two edits
    # of one fact in memory would make either answer count as wrong.
    for u in sd.units(split, seed, par, pararel_n, cf_n, limit):
        if u.key[0] not in subjects and u.edit not in row_of:
            subjects.add(u.key[0])
            row_of[u.edit] = len(memory)
            memory.append(u.edit)
            keys.append(u.key)
            us.append(u)
    long_subjects = [k[0] for k in keys if k[0] and len(k[0]) >= 4]
    by_subject = {k[0]: k for k in keys}
    for u in us:
        for q, kind in u.positives:
            if kind in IN_KINDS:
                by_kind.setdefault(kind, {}).setdefault(u.source, []).append((q, kind, row_of[u.edit], u.source))
        for q, kind, k in u.negatives:
            # A unit's own negatives are out of its scope by construction; another edit's may not be.
            other = by_subject.get(k[0])
            if other is not None and other != u.key and sd.same_scope(other, k):
                continue
            # CounterFact's other-subject prompt does not name its subject: drop it if it names an edit's.
            if k[0] is None and kind == "srel" and any(sub in q for sub in long_subjects):
                continue
            source = "generic" if k[1] == "generic" else u.source
            if q not in row_of:
                by_kind.setdefault(kind, {}).setdefault(source, []).append((q, kind, None, source))
    n0, n1 = sd.RANGES["nq"][split]
    by_kind.setdefault("nq", {})["nq"] = [(q, "nq", None, "nq") for q in sd.nq_questions(n0, n1)]
    queries = []
    for kind in IN_KINDS + OUT_KINDS:
        # Round-robin over the sources, so that the small sets are not drowned by PARAREL.
        lists = [rng.sample(v, len(v)) for _, v in sorted(by_kind.get(kind, {}).items())]
        taken, i = [], 0
        while len(taken) < per_kind and any(i < len(v) for v in lists):
            taken += [v[i] for v in lists if i < len(v)][: per_kind - len(taken)]
            i += 1
        queries += taken
    return EvalSet(memory, keys, queries)
