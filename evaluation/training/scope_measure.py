"""How well the scope model decides, measured on an evaluation set: its decisions, the per-kind table
(scope.json's held-out figures), the fitted thresholds, and what a decision costs."""

from __future__ import annotations

import statistics
import time

import torch

from editors.scope.model import ScopeModel
from editors.scope.subject import AnchorIndex, anchor_for
from evaluation.training.scope_eval_set import IN_KINDS, OUT_KINDS, EvalSet

NEG_WEIGHTS = {"srel": 2.0, "ssubj": 2.0, "nq": 1.0}  # hard negatives count double in the threshold fit


def decisions(scope: ScopeModel, ev: EvalSet, batch: int = 64):
    memory = scope.embed(ev.memory, batch_size=128)
    texts = [q[0] for q in ev.queries]
    qv = scope.embed(texts, batch_size=128)
    anchors, found = ev.anchors(), []
    for s in range(0, len(texts), batch):
        found += scope.decide(qv[s : s + batch], texts[s : s + batch], memory, ev.memory, anchors)
    return found, qv, memory


def table(ev: EvalSet, found, threshold: float = -1.0) -> dict:
    """In-scope: the right edit decided. Out-of-scope: nothing decided. Per kind and per kind x source."""
    ok: dict[str, list[bool]] = {}
    by_source: dict[str, list[bool]] = {}
    wrong = []
    for (_, kind, row, source), f in zip(ev.queries, found):
        f = f if f is not None and f[1] >= threshold else None
        good = f is not None and f[0] == row if row is not None else f is None
        if row is not None:
            wrong.append(f is not None and f[0] != row)
        ok.setdefault(kind, []).append(good)
        by_source.setdefault(f"{kind}/{source}", []).append(good)
    rate = {k: round(sum(v) / len(v), 4) for k, v in ok.items()}
    pos = statistics.mean(rate[k] for k in IN_KINDS if k in rate)
    neg = sum(rate[k] * w for k, w in NEG_WEIGHTS.items() if k in rate) / sum(
        w for k, w in NEG_WEIGHTS.items() if k in rate
    )
    return {
        "in_scope_hit": {k: rate[k] for k in IN_KINDS if k in rate},
        "out_of_scope_rejected": {k: rate[k] for k in OUT_KINDS if k in rate},
        "balanced": round((pos + neg) / 2, 4),
        "wrong_edit": round(sum(wrong) / max(1, len(wrong)), 4),
        "n": {k: len(v) for k, v in ok.items()},
        "by_source": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_source.items())},
    }


def fit_thresholds(scope: ScopeModel, dev: EvalSet, recall: float) -> dict:
    """embed_floor: the cosine that keeps `recall` of dev's in-scope queries' right edits; then
    cross_threshold: the probability that maximises the balanced dev score (hard negatives x2)."""
    scope.embed_floor, scope.cross_threshold = -1.0, -1.0
    memory = scope.embed(dev.memory, batch_size=128)
    qv = scope.embed([q[0] for q in dev.queries], batch_size=128)
    pos = [(i, q[2]) for i, q in enumerate(dev.queries) if q[2] is not None]
    anchors = dev.anchors()
    allowed = anchors.allowed([dev.queries[i][0] for i, _ in pos], len(dev.memory))
    cands = scope.candidates(scope.similarities(qv[[i for i, _ in pos]], memory, dev.memory, allowed))
    right = [float(qv[i] @ memory[row]) if row in c else float("-inf") for (i, row), c in zip(pos, cands)]
    floor = next(
        (f / 100 for f in range(95, -100, -1) if sum(r >= f / 100 for r in right) >= recall * len(right)), -1.0
    )
    scope.embed_floor = floor = round(floor - 0.02, 2)  # a margin: dev is small, and candidates cost little
    ranked = sum(r >= floor for r in right)
    found = []
    for s in range(0, len(dev.queries), 64):
        part = dev.queries[s : s + 64]
        found += scope.decide(qv[s : s + 64], [q[0] for q in part], memory, dev.memory, anchors)
    grid = [round(0.01 * i, 2) for i in range(2, 99)]
    scores = [table(dev, found, t)["balanced"] for t in grid]
    best = max(scores)
    tied = [t for t, s in zip(grid, scores) if s == best]
    threshold = tied[len(tied) // 2]  # the middle of the best plateau
    return {
        "embed_floor": floor,
        "cross_threshold": threshold,
        "dev": {"embed_candidate_recall": round(ranked / max(1, len(right)), 4), "table": table(dev, found, threshold)},
    }


def time_decide(scope: ScopeModel, ev: EvalSet, memory: torch.Tensor, rows: int = 10_000, n: int = 40) -> dict:
    """ms per query: embed one query, then decide over `rows` edits (the test memory, repeated)."""
    reps = -(-rows // memory.shape[0])
    mem = memory.repeat(reps, 1)[:rows].contiguous()
    prompts = (ev.memory * reps)[:rows]
    anchors = AnchorIndex()
    for row, (prompt, key) in enumerate(zip(prompts, (ev.keys * reps)[:rows])):
        anchors.add(row, anchor_for(prompt, key[0]))
    qs = [q[0] for q in ev.queries[:: max(1, len(ev.queries) // n)]][:n]
    scope.decide(scope.embed(qs[:1]), qs[:1], mem, prompts, anchors)  # warm-up
    times, embed_times = [], []
    for q in qs:
        t = time.perf_counter()
        v = scope.embed([q])
        embed_times.append(time.perf_counter() - t)
        scope.decide(v, [q], mem, prompts, anchors)
        times.append(time.perf_counter() - t)
    return {
        "rows": rows,
        "queries": len(qs),
        "ms_median": round(1000 * statistics.median(times), 1),
        "ms_max": round(1000 * max(times), 1),
        "embed_ms_median": round(1000 * statistics.median(embed_times), 1),
    }


def print_table(name: str, tab: dict) -> None:
    cells = [f"{k} {v:.3f}" for k, v in tab["in_scope_hit"].items()]
    cells += [f"reject {k} {v:.3f}" for k, v in tab["out_of_scope_rejected"].items()]
    print(
        f"{name:>10}: " + "  ".join(cells) + f"  | balanced {tab['balanced']:.3f}  wrong-edit {tab['wrong_edit']:.3f}"
    )
