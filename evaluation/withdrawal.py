"""Withdrawal, measured: each edit taken out alone (the others active) and put back — does its prompt
return to the unedited answer (rs), and does nothing else move (con)? Definitions in metrics.py."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from evaluation.systems import CaseSet, PerRecord, System

NOISE_SAMPLE = 50  # edits whose per-edit predictions are compared with the batched ones


@dataclass
class _Tally:
    changed: int = 0  # tokens the edit changed
    back: int = 0  # ... that withdrawal changed again
    total: int = 0  # tokens compared
    same_as_base: int = 0  # ... equal to the unedited prediction after withdrawal
    fired_after: dict = field(default_factory=dict)  # who acted on the withdrawn prompt's tokens
    detail: dict = field(default_factory=dict)  # edit -> its predictions with it withdrawn

    def add(self, system: System, k: int, base, edited, withdrawn) -> None:
        owners = system.last_fired_owner or [None] * len(withdrawn)
        for (pb, _), (pe, _), (pw, _), who in zip(base, edited, withdrawn, owners):
            self.total += 1
            self.same_as_base += pw == pb
            if pe != pb:
                self.changed += 1
                self.back += pw != pe
            if system.last_fired_owner is not None:
                slot = self.fired_after.setdefault(_who(system, k, who), {"cases": 0, "as_unedited": 0})
                slot["cases"] += 1
                slot["as_unedited"] += pw == pb
        # a token the withdrawn path lacks counts as inconsistent
        self.total += max(0, len(base) - len(withdrawn))
        self.detail[k] = [pw for pw, _ in withdrawn]


def _who(system: System, k: int, who: str | None) -> str:
    if who is None:
        return "none"
    mine = system.subjects.get(system.ids[k])
    return "other edit, same subject" if mine is not None and system.subjects.get(who) == mine else "other edit"


def measure_withdrawal(
    system: System, cs: CaseSet, base: PerRecord, edited: PerRecord, sample: int | None = None, seed: int = 0
) -> tuple[float, float, dict]:
    """rs / con as defined in evaluation/metrics.py, plus per-edit detail; on a seeded sample of
    `sample` edits when given."""
    n = len(cs.queries)
    chosen = list(range(n))
    if sample is not None and sample < n:
        chosen = sorted(random.Random(seed).sample(chosen, sample))
    tally = _Tally()
    for k in tqdm(chosen, desc="withdraw one edit at a time", leave=False):
        got = system.predict_withdrawn(k, cs, base)
        if got is not None:
            tally.add(system, k, base[k], edited[k], got[0])
    rs = tally.back / tally.changed if tally.changed else 1.0
    con = tally.same_as_base / tally.total if tally.total else 1.0
    info = {
        "edits": len(tally.detail),
        "changed_tokens": tally.changed,
        "tokens": tally.total,
        "sampled": len(chosen) < n,
        "fired_after": tally.fired_after,
    }
    # numeric check: per-edit predictions (small batches) vs the batched ones the metrics used
    noise = chosen[:NOISE_SAMPLE]
    info["batch_noise_mismatches"] = sum(
        p != e
        for k in noise
        if k not in system.rejected
        for (p, _), (e, _) in zip(system.predict_one(k, cs), edited[k])
    )
    info["batch_noise_sample"] = len(noise)
    # the paper's literal RS: share of all prompt tokens whose prediction changes on withdrawal
    lit = [pw != pe for k, w in tally.detail.items() for pw, (pe, _) in zip(w, edited[k])]
    info["rs_all_tokens"] = sum(lit) / len(lit) if lit else None
    info["per_edit"] = tally.detail
    return rs, con, info
