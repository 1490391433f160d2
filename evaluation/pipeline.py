"""One evaluation run: edit a backbone with N facts from a dataset, one after another, then measure them
all active (evaluation/metrics.py). `run` returns a `Results`; evaluation/report.py writes it out.

All N edits are inserted through the editor classes the server uses (evaluation/systems.py). Unedited
predictions are cached on disk (<cache dir>/eval) keyed by model, sequences, batch size and thread
count, unless the run says no_cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editors.backbone import Backbone, encode_target
from evaluation import datasets
from evaluation.build import build
from evaluation.metrics import (
    METRIC_KEYS,
    contains_target,
    firing_diagnostics,
    starts_with_target,
    token_accuracy,
    unchanged_share,
)
from evaluation.systems import CaseSet, PerRecord, System

GEN_EXTRA_TOKENS = 3  # generation budget: the target's token count plus this
NOISE_SAMPLE = 50  # edits whose per-edit predictions are compared with the batched ones
CHAT_EXTRA_TOKENS = 12  # a chat answer may say a few words before the fact
PROBE_SETS = ("same_subject", "neighbourhood", "portability")  # per-record probe lists (datasets.Probe)


@dataclass
class Results:
    """Everything one run measured, as evaluation/report.py writes it."""

    args: argparse.Namespace  # the run's options (editserve eval's flags)
    model: str
    code_version: str  # git revision at the start, "+uncommitted changes" when the tree differed
    threads: int
    data_root: Path
    records: list[datasets.Record]  # the records measured (all inserted ones, or the --eval-sample)
    questions: list[datasets.Question]  # NS probes
    sets: dict[str, CaseSet]  # es, ps, locality, ns
    base: dict[str, PerRecord]  # unedited predictions per case set
    edited: dict[str, PerRecord]  # predictions with every edit active
    gen_texts: dict[str, list[str]]  # es, ps: the greedy generations
    gen_ok: dict[str, list[bool]]  # ... that start with the target
    chat_texts: dict[str, list[str]]  # es, ps: the answers to the prompt / paraphrase as a chat turn
    chat_ok: dict[str, list[bool]]  # ... that contain the target
    probes: dict[str, list[tuple[int, datasets.Probe]]]  # same_subject, ...: (record, probe) per case-set pair
    withdrawal: dict  # rs/con detail (evaluation.pipeline.measure_withdrawal); {} when not withdrawable
    rejected: dict[int, str]  # measured record -> why the editor refused its edit
    description: dict  # the method's settings (System.describe)
    decide_ms: float | None  # mean scope decision time per query, for methods that decide
    diagnostics: dict  # which edit acted on which cases (metrics.firing_diagnostics)
    metrics: dict  # METRIC_KEYS -> value
    decode: Callable[[list[int]], str]  # token ids -> text (the backbone's tokenizer)


def load_backbone_for(args) -> Backbone:
    from editors.backbone import DEFAULT_MODEL, load_backbone

    return load_backbone(args.model or DEFAULT_MODEL, args.cache_dir)


def git_describe() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


# -- unedited predictions, cached ------------------------------------------------------------------------
def _model_fingerprint(backbone: Backbone) -> str:
    w = backbone.model.get_output_embeddings().weight
    return f"{backbone.name}:{sum(p.numel() for p in backbone.model.parameters())}:{float(w.double().sum()):.6e}"


def base_predictions(backbone: Backbone, cs: CaseSet, batch_size: int, progress: str, cache_dir: Path | None):
    """The unedited model's predictions on a case set (one forward per pair), cached on disk."""
    if not cs.seqs:
        return torch.zeros(0, dtype=torch.long)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [
                    "shared",
                    _model_fingerprint(backbone),
                    torch.__version__,
                    torch.get_num_threads(),
                    batch_size,
                    str(backbone.device),
                ]
            ).encode()
        )
        h.update(json.dumps([cs.prompt_ids, cs.target_ids]).encode())
        path = cache_dir / f"{h.hexdigest()[:32]}.pt"
        if path.exists():
            try:
                return torch.load(path)
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                pass
    preds, _ = cs.plain(backbone, batch_size, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(preds, tmp)
        os.replace(tmp, path)
    return preds


# -- one run -----------------------------------------------------------------------------------------------
def _records(args) -> tuple[list[datasets.Record], list[int], Path]:
    """(every record to insert, the indices of those measured, data root)."""
    root = datasets.data_root(args.data_dir)
    records = datasets.load(args.dataset, args.split, args.n, root)
    if args.n is not None and len(records) < args.n:
        print(f"note: {args.dataset}/{args.split} has {len(records)} records, fewer than --n {args.n}", file=sys.stderr)
    # All N edits are inserted; with --eval-sample the metrics are measured on a seeded sample of them.
    evaluated = list(range(len(records)))
    if args.eval_sample is not None and args.eval_sample < len(records):
        evaluated = sorted(random.Random(args.seed).sample(evaluated, args.eval_sample))
    return records, evaluated, root


def _measure_only(system: System, evaluated: list[int], inserted: int) -> None:
    """From here on case k is edit evaluated[k]: renumber the system's per-edit bookkeeping."""
    if len(evaluated) == inserted:
        return
    if system.ids:
        system.ids = [system.ids[k] for k in evaluated]
    position = {k: j for j, k in enumerate(evaluated)}
    system.rejected = {position[k]: why for k, why in system.rejected.items() if k in position}


def _generations(system: System, records: list[datasets.Record], tok) -> tuple[dict, dict]:
    texts = {}
    for name, queries in (("es", [r.prompt for r in records]), ("ps", [r.paraphrase for r in records])):
        budgets = [len(encode_target(tok, q, r.target)) + GEN_EXTRA_TOKENS for q, r in zip(queries, records)]
        texts[name] = [tok.decode(g) for g in system.generate(queries, budgets, progress=f"generate {name}")]
    ok = {name: [starts_with_target(t, r.target) for t, r in zip(texts[name], records)] for name in texts}
    return texts, ok


def _chats(system: System, records: list[datasets.Record], tok) -> tuple[dict, dict]:
    """The chat answers to the prompts and paraphrases; none for a model without a chat template (a base
    model, such as the packaged Gemma 3 270M): its chat_es and chat_ps are then None."""
    texts: dict[str, list[str]] = {}
    if getattr(tok, "chat_template", None) is None:
        return texts, {}
    for name, queries in (("es", [r.prompt for r in records]), ("ps", [r.paraphrase for r in records])):
        budgets = [len(encode_target(tok, q, r.target)) + CHAT_EXTRA_TOKENS for q, r in zip(queries, records)]
        texts[name] = system.chat(queries, budgets)
    ok = {name: [contains_target(t, r.target) for t, r in zip(texts[name], records)] for name in texts}
    return texts, ok


def _probes(records: list[datasets.Record]) -> dict[str, list[tuple[int, datasets.Probe]]]:
    return {name: [(k, p) for k, r in enumerate(records) for p in getattr(r, name)] for name in PROBE_SETS}


def run(args, backbone: Backbone, started: float | None = None) -> Results:
    """Run one evaluation as described by args (editserve eval's flags) and return what it measured."""
    started = time.perf_counter() if started is None else started
    code_version = git_describe()  # at the start: the code this run imported
    inserted, evaluated, root = _records(args)
    records = [inserted[k] for k in evaluated]
    questions = datasets.nq(args.split, root)[: len(records)]
    tok = backbone.tokenizer
    cache_dir = None if args.no_cache else Path(args.cache_dir).expanduser() / "eval"

    sets = {
        "es": CaseSet.build(tok, [r.prompt for r in records], [r.target for r in records]),
        "ps": CaseSet.build(tok, [r.paraphrase for r in records], [r.target for r in records]),
        "locality": CaseSet.build(tok, [r.loc_prompt for r in records], [r.loc_answer for r in records]),
        "ns": CaseSet.build(tok, [q.prompt for q in questions], [q.answer for q in questions]),
    }
    probes = _probes(records)
    for name, items in probes.items():
        if items:
            sets[name] = CaseSet.build(tok, [p.prompt for _, p in items], [p.answer for _, p in items])
    base = {
        name: cs.group(base_predictions(backbone, cs, args.batch_size, f"unedited {name}", cache_dir))
        for name, cs in sets.items()
    }

    system = build(
        args.method,
        backbone,
        batch_size=args.batch_size,
        layer=args.layer,
        retrofit=args.retrofit,
        overrides=args.overrides,
        cache_dir=args.cache_dir,
    )
    try:
        insert_seconds = system.insert_all(inserted)
        _measure_only(system, evaluated, len(inserted))
        edited, fired_by = {}, {}
        for name, cs in sets.items():
            edited[name] = system.predict(cs, base[name], progress=f"edited {name}")
            fired_by[name] = system.last_fired_owner
        gen_texts, gen_ok = _generations(system, records, tok)
        chat_texts, chat_ok = _chats(system, records, tok)
        rs = con = None
        withdrawal = {}
        if system.withdrawable:
            rs, con, withdrawal = measure_withdrawal(
                system, sets["es"], base["es"], edited["es"], args.withdraw_sample, args.seed
            )
        diagnostics = firing_diagnostics(records, sets, base, edited, fired_by, withdrawal, system.ids, system.subjects)
        description = system.describe()
        rejected = dict(system.rejected)
        decide_ms = 1000 * sum(system.decide_seconds) / len(system.decide_seconds) if system.decide_seconds else None
    finally:
        system.close()

    metrics = {
        "es": token_accuracy(edited["es"]),
        "ps": token_accuracy(edited["ps"]),
        "locality": unchanged_share(base["locality"], edited["locality"]),
        "es_gen": sum(gen_ok["es"]) / len(records),
        "ps_gen": sum(gen_ok["ps"]) / len(records),
        "ns": token_accuracy(edited["ns"]),
        "rs": rs,
        "con": con,
        "chat_es": sum(chat_ok["es"]) / len(records) if chat_ok else None,
        "chat_ps": sum(chat_ok["ps"]) / len(records) if chat_ok else None,
        "same_subject": unchanged_share(base["same_subject"], edited["same_subject"])
        if "same_subject" in sets
        else None,
        "neighbourhood": unchanged_share(base["neighbourhood"], edited["neighbourhood"])
        if "neighbourhood" in sets
        else None,
        "portability": token_accuracy(edited["portability"]) if "portability" in sets else None,
        "n_edits": len(inserted),
        "seconds": round(time.perf_counter() - started, 3),
        "insert_seconds_per_edit": (insert_seconds / len(inserted)) if args.method != "none" else 0.0,
    }
    assert tuple(metrics) == METRIC_KEYS
    return Results(
        args=args,
        model=backbone.name,
        code_version=code_version,
        threads=torch.get_num_threads(),
        data_root=root,
        records=records,
        questions=questions,
        sets=sets,
        base=base,
        edited=edited,
        gen_texts=gen_texts,
        gen_ok=gen_ok,
        chat_texts=chat_texts,
        chat_ok=chat_ok,
        probes=probes,
        withdrawal=withdrawal,
        rejected=rejected,
        description=description,
        decide_ms=decide_ms,
        diagnostics=diagnostics,
        metrics=metrics,
        decode=tok.decode,
    )


def measure_withdrawal(
    system: System, cs: CaseSet, base: PerRecord, edited: PerRecord, sample: int | None = None, seed: int = 0
) -> tuple[float, float, dict]:
    """rs / con as defined in evaluation/metrics.py, plus per-edit detail; on a seeded sample of
    `sample` edits when given."""
    n = len(cs.queries)
    chosen = list(range(n))
    if sample is not None and sample < n:
        chosen = sorted(random.Random(seed).sample(chosen, sample))
    changed = back = total = same_as_base = 0
    detail, fired_after = {}, {}
    for k in tqdm(chosen, desc="withdraw one edit at a time", leave=False):
        got = system.predict_withdrawn(k, cs, base)
        if got is None:
            continue
        w = got[0]
        owners = system.last_fired_owner or [None] * len(w)
        for (pb, _), (pe, _), (pw, _), who in zip(base[k], edited[k], w, owners):
            total += 1
            same_as_base += pw == pb
            if pe != pb:
                changed += 1
                back += pw != pe
            if system.last_fired_owner is not None:
                mine = system.subjects.get(system.ids[k])
                g = (
                    "none"
                    if who is None
                    else (
                        "other edit, same subject"
                        if mine is not None and system.subjects.get(who) == mine
                        else "other edit"
                    )
                )
                slot = fired_after.setdefault(g, {"cases": 0, "as_unedited": 0})
                slot["cases"] += 1
                slot["as_unedited"] += pw == pb
        # a token the withdrawn path lacks counts as inconsistent
        total += max(0, len(base[k]) - len(w))
        detail[k] = [pw for pw, _ in w]
    rs = back / changed if changed else 1.0
    con = same_as_base / total if total else 1.0
    info = {
        "edits": len(detail),
        "changed_tokens": changed,
        "tokens": total,
        "sampled": len(chosen) < n,
        "fired_after": fired_after,
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
    lit = [pw != pe for k, w in detail.items() for pw, (pe, _) in zip(w, edited[k])]
    info["rs_all_tokens"] = sum(lit) / len(lit) if lit else None
    info["per_edit"] = detail
    return rs, con, info


# -- sweeps ------------------------------------------------------------------------------------------------
def sweep_points(args, backbone: Backbone) -> tuple[str, list[int]]:
    """(the swept option's name, its values): N values for --sweep edits, layers for --sweep layer."""
    if args.sweep == "edits":
        whole = len(datasets.load(args.dataset, args.split, None, datasets.data_root(args.data_dir)))
        if args.points:
            points = [int(p) for p in args.points.split(",")]
        else:
            points = sorted({p for p in (10, 100, 1000) if p < whole} | {whole})
        if args.n is not None:
            points = [p for p in points if p <= args.n]
        return "n", points
    if args.points:
        return "layer", [int(p) for p in args.points.split(",")]
    layers = backbone.num_layers
    return "layer", sorted(set(range(0, layers, args.layer_step)) | {layers - 1})


def point_args(args, x_name: str, point: int, out: Path) -> argparse.Namespace:
    """The options of one sweep point: args with N or the layer set, writing to out/<name><point>."""
    sub = argparse.Namespace(**vars(args))
    sub.sweep = None
    if x_name == "n":
        sub.n = point
    else:
        sub.layer = point
        sub.n = args.n if args.n is not None else 100
    sub.out = str(out / f"{x_name}{point}")
    return sub
