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

from editors.backbone import Backbone, encode_target
from evaluation import datasets
from evaluation.build import build
from evaluation.metrics import (
    METRIC_KEYS,
    WILD_KEYS,
    contains_target,
    edited_fact_split,
    firing_diagnostics,
    starts_with_target,
    token_accuracy,
    unchanged_share,
)
from evaluation.systems import CaseSet, PerRecord, System
from evaluation.wild import Wild
from evaluation.wild import measure as measure_wild
from evaluation.withdrawal import measure_withdrawal

GEN_EXTRA_TOKENS = 3  # generation budget: the target's token count plus this
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
    wild: Wild | None  # chat, open and yes/no answers judged whole (evaluation/wild.py)
    probes: dict[str, list[tuple[int, datasets.Probe]]]  # same_subject, ...: (record, probe) per case-set pair
    withdrawal: dict  # rs/con detail (evaluation.withdrawal.measure_withdrawal); {} when not withdrawable
    rejected: dict[int, str]  # measured record -> why the editor refused its edit
    description: dict  # the method's settings (System.describe)
    decide_ms: float | None  # mean scope decision time per query, for methods that decide
    diagnostics: dict  # which edit acted on which cases (metrics.firing_diagnostics)
    metrics: dict  # METRIC_KEYS -> value
    decode: Callable[[list[int]], str]  # token ids -> text (the backbone's tokenizer)


def load_backbone_for(args) -> Backbone:
    from editors.backbone import DEFAULT_MODEL, load_backbone

    return load_backbone(args.model or DEFAULT_MODEL, args.cache_dir, quant=getattr(args, "quant", None) or "none")


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
    # the kinds of linear layer tell a quantised backbone from its float32 weights (the same parameters)
    kinds = ",".join(sorted({type(m).__name__ for m in backbone.model.modules() if "Linear" in type(m).__name__}))
    size = sum(p.numel() for p in backbone.model.parameters())
    return f"{backbone.name}:{kinds}:{size}:{float(w.double().sum()):.6e}"


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
    owners = list(range(len(records)))
    for name, queries in (("es", [r.prompt for r in records]), ("ps", [r.paraphrase for r in records])):
        budgets = [len(encode_target(tok, q, r.target)) + GEN_EXTRA_TOKENS for q, r in zip(queries, records)]
        made = system.generate(queries, budgets, progress=f"generate {name}", owners=owners)
        texts[name] = [tok.decode(g) for g in made]
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
        texts[name] = system.chat(queries, budgets, list(range(len(records))))
    ok = {name: [contains_target(t, r.target) for t, r in zip(texts[name], records)] for name in texts}
    return texts, ok


def _owners(name: str, n: int, probes: dict) -> list[int] | None:
    """The measured record each pair of a case set is about (None for NQ questions, about none)."""
    if name in probes:
        return [k for k, _ in probes[name]]
    return None if name == "ns" else list(range(n))


def _probes(records: list[datasets.Record]) -> dict[str, list[tuple[int, datasets.Probe]]]:
    return {name: [(k, p) for k, r in enumerate(records) for p in getattr(r, name)] for name in PROBE_SETS}


@dataclass
class Cases:
    """What one run asks: the records, the case sets built from them, and the unedited answers."""

    inserted: list[datasets.Record]
    records: list[datasets.Record]  # those measured
    evaluated: list[int]  # their places among the inserted
    root: Path
    questions: list[datasets.Question]
    sets: dict[str, CaseSet]
    probes: dict[str, list[tuple[int, datasets.Probe]]]
    base: dict[str, PerRecord]


@dataclass
class Measured:
    """What the edited system answered to the cases."""

    insert_seconds: float
    edited: dict[str, PerRecord]
    gen_texts: dict[str, list[str]]
    gen_ok: dict[str, list[bool]]
    chat_texts: dict[str, list[str]]
    chat_ok: dict[str, list[bool]]
    wild: Wild | None
    rs: float | None
    con: float | None
    withdrawal: dict
    diagnostics: dict
    description: dict
    rejected: dict[int, str]
    decide_ms: float | None


def run(args, backbone: Backbone, started: float | None = None) -> Results:
    """Run one evaluation as described by args (editserve eval's flags) and return what it measured."""
    started = time.perf_counter() if started is None else started
    code_version = git_describe()  # at the start: the code this run imported
    cases = build_cases(args, backbone)
    measured = measure(args, backbone, cases)
    return Results(
        args=args,
        model=backbone.name,
        code_version=code_version,
        threads=torch.get_num_threads(),
        data_root=cases.root,
        records=cases.records,
        questions=cases.questions,
        sets=cases.sets,
        base=cases.base,
        edited=measured.edited,
        gen_texts=measured.gen_texts,
        gen_ok=measured.gen_ok,
        chat_texts=measured.chat_texts,
        chat_ok=measured.chat_ok,
        wild=measured.wild,
        probes=cases.probes,
        withdrawal=measured.withdrawal,
        rejected=measured.rejected,
        description=measured.description,
        decide_ms=measured.decide_ms,
        diagnostics=measured.diagnostics,
        metrics=score(args, cases, measured, started),
        decode=backbone.tokenizer.decode,
    )


def build_cases(args, backbone: Backbone) -> Cases:
    """The records, their case sets, and the unedited model's predictions on every set."""
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
    return Cases(inserted, records, evaluated, root, questions, sets, probes, base)


def measure(args, backbone: Backbone, cases: Cases) -> Measured:
    """Insert every edit into the system under test, then ask it every case, generate, chat, and
    withdraw (rs / con)."""
    system = build(
        args.method,
        backbone,
        batch_size=args.batch_size,
        layer=args.layer,
        retrofit=args.retrofit,
        overrides=args.overrides,
        cache_dir=args.cache_dir,
    )
    records, sets, base, tok = cases.records, cases.sets, cases.base, backbone.tokenizer
    try:
        insert_seconds = system.insert_all(cases.inserted)
        _measure_only(system, cases.evaluated, len(cases.inserted))
        edited, fired_by = {}, {}
        for name, cs in sets.items():
            owners = _owners(name, len(records), cases.probes)
            edited[name] = system.predict(cs, base[name], progress=f"edited {name}", owners=owners)
            fired_by[name] = system.last_fired_owner
        gen_texts, gen_ok = _generations(system, records, tok)
        chat_texts, chat_ok = _chats(system, records, tok)
        unedited = system if args.method == "none" else System(backbone, args.batch_size)
        wild = measure_wild(system, unedited, records, tok)
        rs = con = None
        withdrawal: dict = {}
        if system.withdrawable:
            rs, con, withdrawal = measure_withdrawal(
                system, sets["es"], base["es"], edited["es"], args.withdraw_sample, args.seed
            )
        diagnostics = firing_diagnostics(records, sets, base, edited, fired_by, withdrawal, system.ids, system.subjects)
        if cases.probes.get("same_subject"):
            split = edited_fact_split(
                records, cases.probes["same_subject"], base["same_subject"], edited["same_subject"]
            )
            diagnostics["same_subject"] = split
        decide_ms = 1000 * sum(system.decide_seconds) / len(system.decide_seconds) if system.decide_seconds else None
        return Measured(
            *(insert_seconds, edited, gen_texts, gen_ok, chat_texts, chat_ok, wild),
            *(rs, con, withdrawal, diagnostics),
            description=system.describe(),
            rejected=dict(system.rejected),
            decide_ms=decide_ms,
        )
    finally:
        system.close()


def score(args, cases: Cases, m: Measured, started: float) -> dict:
    """The metrics (METRIC_KEYS) of what was measured."""
    base, edited, n = cases.base, m.edited, len(cases.records)

    def unchanged(name: str) -> float | None:
        return unchanged_share(base[name], edited[name]) if name in cases.sets else None

    metrics = {
        "es": token_accuracy(edited["es"]),
        "ps": token_accuracy(edited["ps"]),
        "locality": unchanged_share(base["locality"], edited["locality"]),
        "es_gen": sum(m.gen_ok["es"]) / n,
        "ps_gen": sum(m.gen_ok["ps"]) / n,
        "ns": token_accuracy(edited["ns"]),
        "rs": m.rs,
        "con": m.con,
        "chat_es": sum(m.chat_ok["es"]) / n if m.chat_ok else None,
        "chat_ps": sum(m.chat_ok["ps"]) / n if m.chat_ok else None,
        **(m.wild.metrics() if m.wild is not None else dict.fromkeys(WILD_KEYS)),
        "same_subject": unchanged("same_subject"),
        "neighbourhood": unchanged("neighbourhood"),
        "portability": token_accuracy(edited["portability"]) if "portability" in cases.sets else None,
        "subject_aliasing": _of_kind(cases, edited, "portability", "Subject_Aliasing"),
        "n_edits": len(cases.inserted),
        "seconds": round(time.perf_counter() - started, 3),
        "insert_seconds_per_edit": (m.insert_seconds / len(cases.inserted)) if args.method != "none" else 0.0,
    }
    assert tuple(metrics) == METRIC_KEYS
    return metrics


def _of_kind(cases: Cases, edited: dict, name: str, kind: str) -> float | None:
    """Token accuracy of the probes of one kind in a probe set (KnowEdit's portability kinds); None
    where the run has none of that kind."""
    picked = [edited[name][i] for i, (_, p) in enumerate(cases.probes.get(name, [])) if p.kind == kind]
    return token_accuracy(picked) if picked else None


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
