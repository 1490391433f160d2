"""`editserve eval`: edit a backbone with N facts from a dataset, one after another, then measure.

    editserve eval --dataset zsre --n 1037 --method ireva --out runs/zsre-ireva
    editserve eval --dataset zsre --method ireva --sweep edits --out runs/sweep-edits
    editserve eval --dataset zsre --n 200 --method ireva --sweep layer --out runs/sweep-layer

All N edits are inserted through the editor classes the server uses, then evaluated with all of them
active. Metrics (each in [0, 1], micro-averaged over tokens where they are token-level):

  es, ps     teacher-forced accuracy of the target's tokens after the prompt / paraphrase (appendix 9.5:
             one case per target token, the prompt plus the target tokens before it)
  locality   share of the out-of-scope probe's teacher-forced tokens whose prediction equals the
             unedited model's (zsRE loc/loc_ans, CounterFact locality_prompt, PARAREL an NQ question)
  es_gen, ps_gen  greedy generation (KV cache, as the server generates) from the prompt / paraphrase
             starts with the whole target (leading whitespace of the generation ignored)
  ns         teacher-forced accuracy of NQ answers with the edits active (the iReVa paper's NS)
  rs, con    withdrawable methods only (null otherwise): each edit k is withdrawn on its own, the others
             active, and its prompt's cases predicted again; rs = share of the tokens whose prediction
             the edit had changed (edited != unedited) that change back (withdrawn != edited); con =
             share of all the prompt's tokens predicted as by the unedited model (withdrawn == unedited)
  n_edits    records evaluated (edits requested; refused ones are listed in report.md)
  seconds    wall clock of the whole run; insert_seconds_per_edit: mean time of one insert (FT: training
             time / N)

Writes DIR/metrics.json (exactly those keys), DIR/report.md, DIR/records.jsonl (per-record detail),
and prints the metrics as the last line of stdout. Unedited predictions are cached on disk
(~/.cache/editserve/eval) keyed by model, sequences, batch size and thread count; --no-cache skips it.
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
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editors.backbone import encode_target
from evaluation import datasets

METRIC_KEYS = ("es", "ps", "locality", "es_gen", "ps_gen", "ns", "rs", "con", "n_edits", "seconds",
               "insert_seconds_per_edit")
METHODS = ("none", "ireva", "serac", "ft")
GEN_EXTRA_TOKENS = 3  # generation budget: the target's token count plus this
NOISE_SAMPLE = 50  # edits whose per-edit predictions are compared with the batched ones


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="editserve eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=datasets.DATASETS, default="zsre")
    ap.add_argument("--n", type=int, default=None, help="first N records of the file (default: all)")
    ap.add_argument("--method", choices=METHODS, default="ireva")
    ap.add_argument("--retrofit", action="store_true", help="iReVa with retrofit (insert(..., retrofit=True))")
    ap.add_argument("--split", choices=datasets.SPLITS, default="acceptance",
                    help="acceptance files are for reporting; tune on dev (the train files)")
    ap.add_argument("--layer", type=int, default=None, help="iReVa adaptor layer / FT layer (negative from the top)")
    ap.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the method's config (IrevaConfig, SeracConfig; FT: epochs, lr, "
                         "train_batch, seed); repeatable")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--sweep", choices=("edits", "layer"), default=None,
                    help="edits: N in 10, 100, 1000 and the whole file; layer: every --layer-step-th layer")
    ap.add_argument("--points", default=None, help="sweep points, comma-separated (N values or layers)")
    ap.add_argument("--layer-step", type=int, default=3)
    ap.add_argument("--eval-sample", type=int, default=None,
                    help="insert all N edits but measure on a random sample of this many of them (large N)")
    ap.add_argument("--resume", action="store_true",
                    help="sweeps: keep a point whose directory holds metrics.json made by the same command (argv.json)")
    ap.add_argument("--withdraw-sample", type=int, default=None,
                    help="measure rs/con on a random sample of this many edits (default: every edit)")
    ap.add_argument("--data-dir", default=None, help="default $EDITSERVE_EVAL_DATA or ../shared/data")
    ap.add_argument("--model", default=None, help="backbone (default: the packaged SmolLM2)")
    ap.add_argument("--cache-dir", default="~/.cache/editserve")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-cache", action="store_true", help="do not cache unedited predictions on disk")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n is not None and args.n < 1:
        ap.error("--n must be at least 1")
    try:
        args.overrides = dict(item.split("=", 1) for item in args.config)
    except ValueError:
        ap.error("--config takes KEY=VALUE")
    return args


# -- scoring --------------------------------------------------------------------------------------------
def token_accuracy(per_record) -> float:
    pairs = [p == y for rec in per_record for p, y in rec]
    return sum(pairs) / len(pairs) if pairs else 0.0


def unchanged_share(base, edited) -> float:
    """Share of base tokens whose prediction is the same under the edited model (position by position;
    a token the edited path lacks counts as changed)."""
    same = total = 0
    for b, e in zip(base, edited):
        total += len(b)
        same += sum(pb == pe for (pb, _), (pe, _) in zip(b, e))
    return same / total if total else 1.0


def starts_with_target(text: str, target: str) -> bool:
    return text.lstrip().startswith(target.strip())


# -- unedited predictions, cached ------------------------------------------------------------------------
def _model_fingerprint(backbone) -> str:
    w = backbone.model.get_output_embeddings().weight
    return f"{backbone.name}:{sum(p.numel() for p in backbone.model.parameters())}:{float(w.double().sum()):.6e}"


def base_predictions(backbone, cs, batch_size: int, progress: str, cache_dir: Path | None):
    """The unedited model's predictions on a case set (one forward per pair), cached on disk."""
    if not cs.seqs:
        return torch.zeros(0, dtype=torch.long)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(json.dumps(["shared", _model_fingerprint(backbone), torch.__version__, torch.get_num_threads(),
                             batch_size, str(backbone.device)]).encode())
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


# -- one evaluation ---------------------------------------------------------------------------------------
def _git_describe() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def load_backbone_for(args):
    from editors.backbone import DEFAULT_MODEL, load_backbone

    return load_backbone(args.model or DEFAULT_MODEL, args.cache_dir)


def evaluate(args, backbone=None, started: float | None = None) -> dict:
    """Run one evaluation as described by args; writes args.out and returns the metrics dict."""
    from evaluation.systems import CaseSet, build

    started = time.perf_counter() if started is None else started
    code_version = _git_describe()  # at the start: the code this run imported
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = datasets.data_root(args.data_dir)
    records = datasets.load(args.dataset, args.split, args.n, root)
    if args.n is not None and len(records) < args.n:
        print(f"note: {args.dataset}/{args.split} has {len(records)} records, fewer than --n {args.n}",
              file=sys.stderr)
    # All N edits are inserted; with --eval-sample the metrics are measured on a seeded sample of them.
    # `evaluated` lists their indices, and from here on case k is edit evaluated[k].
    evaluated = list(range(len(records)))
    if getattr(args, "eval_sample", None) is not None and args.eval_sample < len(records):
        evaluated = sorted(random.Random(args.seed).sample(evaluated, args.eval_sample))
    inserted, records = records, [records[k] for k in evaluated]
    questions = datasets.nq(args.split, root)[: len(records)]
    if backbone is None:
        backbone = load_backbone_for(args)
    tok = backbone.tokenizer
    cache_dir = None if args.no_cache else Path(args.cache_dir).expanduser() / "eval"

    sets = {
        "es": CaseSet.build(tok, [r.prompt for r in records], [r.target for r in records]),
        "ps": CaseSet.build(tok, [r.paraphrase for r in records], [r.target for r in records]),
        "locality": CaseSet.build(tok, [r.loc_prompt for r in records], [r.loc_answer for r in records]),
        "ns": CaseSet.build(tok, [q.prompt for q in questions], [q.answer for q in questions]),
    }
    base = {name: cs.group(base_predictions(backbone, cs, args.batch_size, f"unedited {name}", cache_dir))
            for name, cs in sets.items()}

    system = build(args.method, backbone, batch_size=args.batch_size, layer=args.layer, retrofit=args.retrofit,
                   overrides=args.overrides)
    try:
        insert_seconds = system.insert_all(inserted)
        if len(records) < len(inserted):
            if system.ids:
                system.ids = [system.ids[k] for k in evaluated]
            position = {k: j for j, k in enumerate(evaluated)}
            system.rejected = {position[k]: why for k, why in system.rejected.items() if k in position}
        edited, fired_by = {}, {}
        for name, cs in sets.items():
            edited[name] = system.predict(cs, base[name], progress=f"edited {name}")
            fired_by[name] = getattr(system, "last_fired_owner", None)

        budgets = {"es": [len(encode_target(tok, r.prompt, r.target)) + GEN_EXTRA_TOKENS for r in records],
                   "ps": [len(encode_target(tok, r.paraphrase, r.target)) + GEN_EXTRA_TOKENS for r in records]}
        gens = {}
        for name, queries in (("es", [r.prompt for r in records]), ("ps", [r.paraphrase for r in records])):
            gens[name] = system.generate(queries, budgets[name], progress=f"generate {name}")
        gen_texts = {name: [tok.decode(g) for g in gs] for name, gs in gens.items()}
        gen_ok = {name: [starts_with_target(t, r.target) for t, r in zip(gen_texts[name], records)]
                  for name in gens}

        rs = con = None
        withdrawal = {}
        if system.withdrawable:
            rs, con, withdrawal = measure_withdrawal(system, sets["es"], base["es"], edited["es"], args)
        diagnostics = firing_diagnostics(records, sets, base, edited, fired_by, withdrawal, system.ids,
                                         getattr(system, "subjects", None))
        description = system.describe()
        rejected = dict(system.rejected)
        route_ms = None
        if getattr(system, "route_seconds", None):
            route_ms = 1000 * sum(system.route_seconds) / len(system.route_seconds)
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
        "n_edits": len(inserted),
        "seconds": round(time.perf_counter() - started, 3),
        "insert_seconds_per_edit": (insert_seconds / len(inserted)) if args.method != "none" else 0.0,
    }
    assert tuple(metrics) == METRIC_KEYS
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_records(out, records, tok, edited, base, gen_texts, gen_ok, withdrawal, rejected)
    _write_report(out, args, metrics, records, questions, sets, base, edited, gen_texts, gen_ok, withdrawal,
                  rejected, description, route_ms, backbone, tok, diagnostics, code_version)
    if diagnostics:
        (out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2) + "\n")
    return metrics


def firing_diagnostics(records, sets, base, edited, fired_by, withdrawal, ids, subjects=None) -> dict:
    """For a method that names the edit acting on each case (iReVa): which edit's neuron fired, and how
    the cases fared in each group. Empty for other methods."""
    if not any(fired_by.get(name) for name in sets):
        return {}
    own_of = {edit_id: k for k, edit_id in enumerate(ids)}
    # every inserted edit's subject (with --eval-sample, the edits measured are only some of them)
    subject_of = subjects or {edit_id: records[k].subject for k, edit_id in enumerate(ids)}
    out = {}
    for name in ("es", "ps"):
        owners = fired_by.get(name)
        if owners is None:
            continue
        groups = {"own": [0, 0], "other edit, same subject": [0, 0], "other edit": [0, 0], "none": [0, 0]}
        cs = sets[name]
        flat = [pair for rec in edited[name] for pair in rec]
        for i, ((p, y), who) in enumerate(zip(flat, owners)):
            k = cs.owner[i]
            if who is None:
                g = "none"
            elif own_of.get(who) == k:
                g = "own"
            elif subject_of.get(who) == records[k].subject:
                g = "other edit, same subject"
            else:
                g = "other edit"
            groups[g][0] += 1
            groups[g][1] += p == y
        out[name] = {g: {"cases": c, "accuracy": (r / c if c else None)} for g, (c, r) in groups.items()}
    for name in ("locality", "ns"):
        owners = fired_by.get(name)
        if owners is None:
            continue
        flat_b = [pair for rec in base[name] for pair in rec]
        flat_e = [pair for rec in edited[name] for pair in rec]
        fired = [who is not None for who in owners]
        changed = [pb != pe for (pb, _), (pe, _) in zip(flat_b, flat_e)]
        out[name] = {"cases": len(owners), "fired": sum(fired),
                     "changed_where_fired": sum(c and f for c, f in zip(changed, fired)),
                     "changed_where_not_fired": sum(c and not f for c, f in zip(changed, fired))}
    if withdrawal.get("fired_after"):
        out["withdrawal"] = withdrawal["fired_after"]
    return out


def cs_subject(system, edit_id):
    return system.subjects.get(edit_id) if getattr(system, "subjects", None) else None


def measure_withdrawal(system, cs, base, edited, args):
    """rs / con as defined in the module docstring, plus per-edit detail."""
    n = len(cs.queries)
    chosen = list(range(n))
    if args.withdraw_sample is not None and args.withdraw_sample < n:
        chosen = sorted(random.Random(args.seed).sample(chosen, args.withdraw_sample))
    changed = back = total = same_as_base = 0
    detail, fired_after = {}, {}
    for k in tqdm(chosen, desc="withdraw one edit at a time", leave=False):
        got = system.predict_withdrawn(k, cs, base)
        if got is None:
            continue
        w = got[0]
        owners = getattr(system, "last_fired_owner", None) or [None] * len(w)
        for (pb, _), (pe, _), (pw, _), who in zip(base[k], edited[k], w, owners):
            total += 1
            same_as_base += pw == pb
            if pe != pb:
                changed += 1
                back += pw != pe
            if hasattr(system, "last_fired_owner"):
                mine = cs_subject(system, system.ids[k])
                g = "none" if who is None else (
                    "other edit, same subject" if mine is not None and cs_subject(system, who) == mine
                    else "other edit")
                slot = fired_after.setdefault(g, {"cases": 0, "as_unedited": 0})
                slot["cases"] += 1
                slot["as_unedited"] += pw == pb
        # a token the withdrawn path lacks counts as inconsistent
        total += max(0, len(base[k]) - len(w))
        detail[k] = [pw for pw, _ in w]
    rs = back / changed if changed else 1.0
    con = same_as_base / total if total else 1.0
    info = {"edits": len(detail), "changed_tokens": changed, "tokens": total, "sampled": len(chosen) < n,
            "fired_after": fired_after}
    # numeric check: per-edit predictions (small batches) vs the batched ones the metrics used
    if hasattr(system, "predict_one"):
        try:
            sample = chosen[:NOISE_SAMPLE]
            mism = sum(p != e for k in sample if k not in system.rejected
                       for (p, _), (e, _) in zip(system.predict_one(k, cs), edited[k]))
            info["batch_noise_mismatches"] = mism
            info["batch_noise_sample"] = len(sample)
        except NotImplementedError:
            pass
    # the paper's literal RS: share of all prompt tokens whose prediction changes on withdrawal
    lit = [pw != pe for k, w in detail.items() for pw, (pe, _) in zip(w, edited[k])]
    info["rs_all_tokens"] = sum(lit) / len(lit) if lit else None
    info["per_edit"] = detail
    return rs, con, info


# -- outputs ----------------------------------------------------------------------------------------------
def _write_records(out, records, tok, edited, base, gen_texts, gen_ok, withdrawal, rejected):
    per_edit = withdrawal.get("per_edit", {})
    with (out / "records.jsonl").open("w") as f:
        for k, r in enumerate(records):
            row = {
                "k": k, "prompt": r.prompt, "target": r.target, "paraphrase": r.paraphrase,
                "es_tokens": [p == y for p, y in edited["es"][k]],
                "ps_tokens": [p == y for p, y in edited["ps"][k]],
                "es_pred": tok.decode([p for p, _ in edited["es"][k]]),
                "ps_pred": tok.decode([p for p, _ in edited["ps"][k]]),
                "loc_changed": sum(pb != pe for (pb, _), (pe, _) in zip(base["locality"][k], edited["locality"][k])),
                "es_gen": gen_texts["es"][k], "ps_gen": gen_texts["ps"][k],
                "es_gen_ok": gen_ok["es"][k], "ps_gen_ok": gen_ok["ps"][k],
            }
            if k in per_edit:
                row["withdrawn_pred"] = tok.decode(per_edit[k])
                row["unedited_pred"] = tok.decode([p for p, _ in base["es"][k]])
            if k in rejected:
                row["rejected"] = rejected[k]
            f.write(json.dumps(row) + "\n")


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _write_report(out, args, metrics, records, questions, sets, base, edited, gen_texts, gen_ok, withdrawal,
                  rejected, description, route_ms, backbone, tok, diagnostics=None, code_version=None):
    cmd = "editserve eval " + " ".join(_argv_of(args))
    lines = [
        f"# eval: {args.method}{' + retrofit' if args.retrofit else ''} on {args.dataset} ({args.split}), "
        f"{metrics['n_edits']} edits" + (f", measured on a sample of {len(records)}"
                                          if len(records) < metrics["n_edits"] else ""), "",
        f"- command: `{cmd}`",
        f"- model: {backbone.name}; code at start: {code_version or _git_describe()}; "
        f"torch threads: {torch.get_num_threads()}",
        f"- method settings: `{json.dumps(description, default=str)}`",
        f"- data: {datasets.data_root(args.data_dir)}; NS on {len(questions)} NQ questions "
        f"({'efficientqa test' if args.split == 'acceptance' else 'NQ-open dev'})",
        "",
        "| metric | value | what |", "|---|---|---|",
        f"| es | {_fmt(metrics['es'])} | {sum(len(x) for x in edited['es'])} target tokens after the prompt, teacher-forced |",
        f"| ps | {_fmt(metrics['ps'])} | {sum(len(x) for x in edited['ps'])} target tokens after the paraphrase |",
        f"| locality | {_fmt(metrics['locality'])} | {sum(len(x) for x in base['locality'])} out-of-scope tokens, prediction unchanged |",
        f"| es_gen | {_fmt(metrics['es_gen'])} | greedy generation from the prompt starts with the target |",
        f"| ps_gen | {_fmt(metrics['ps_gen'])} | same from the paraphrase |",
        f"| ns | {_fmt(metrics['ns'])} | NQ answer tokens right, edits active |",
        f"| rs | {_fmt(metrics['rs'])} | tokens the edit changed that change back when it alone is withdrawn |",
        f"| con | {_fmt(metrics['con'])} | prompt tokens predicted as unedited after withdrawing the edit |",
        f"| n_edits | {metrics['n_edits']} | |",
        f"| seconds | {_fmt(metrics['seconds'])} | whole run |",
        f"| insert_seconds_per_edit | {_fmt(metrics['insert_seconds_per_edit'])} | |",
        "",
        "Unedited model on the same cases: "
        f"es {_fmt(token_accuracy(base['es']))}, ps {_fmt(token_accuracy(base['ps']))}, "
        f"ns {_fmt(token_accuracy(base['ns']))}.",
        "Exact match (all target tokens right, teacher-forced): "
        f"es {_fmt(sum(all(p == y for p, y in x) for x in edited['es']) / len(records))}, "
        f"ps {_fmt(sum(all(p == y for p, y in x) for x in edited['ps']) / len(records))}.",
        "",
        "Semantics: every teacher-forced case is evaluated as its own prefix (an adaptor acting on the last "
        "position sees each prefix as generation would). A plain causal LM (the unedited model, FT, SERAC's "
        "counterfactual model) gets all prefixes of a pair from one forward pass, which is the same "
        "computation; for iReVa, cases on which a neuron fires (judged by the adaptor's own forward on the "
        "layer's input) are re-run prefix by prefix with the adaptor on, the rest are the plain model's. "
        "SERAC: a routed query is scored on counterfactual_prompt(edit, query) + target prefix, an "
        "unrouted one is the unedited model. Generation uses a KV cache exactly as the server does (for an "
        "adaptor below the top layer, a step on which a neuron fired is cached again without the adaptor, as "
        "editors/generation.py does).",
    ]
    if rejected:
        lines += ["", f"Refused by the editor ({len(rejected)}; evaluated as they are, without an edit):"]
        lines += [f"- #{k} {records[k].prompt!r} -> {records[k].target!r}: {why}" for k, why in list(rejected.items())[:20]]
    if route_ms is not None:
        lines += ["", f"SERAC routing: {route_ms:.1f} ms per query on average."]
    fired = description.get("fired_cases")
    if fired is not None:
        lines += ["", f"iReVa: a neuron fired on {fired} teacher-forced cases over all case sets."]
    if withdrawal:
        lines += ["", "Withdrawal: each edit withdrawn alone (editor.withdraw), its prompt's cases predicted, then "
                  "restored with editor.load of its own tensors. "
                  f"{withdrawal['edits']} edits{' (random sample)' if withdrawal['sampled'] else ''}, "
                  f"{withdrawal['tokens']} tokens, {withdrawal['changed_tokens']} of them changed by their edit. "
                  f"The paper's literal RS (all prompt tokens, changed or not): {_fmt(withdrawal['rs_all_tokens'])}."]
        if "batch_noise_mismatches" in withdrawal:
            lines += [f"Numerical check: per-edit (small batch) predictions differ from the batched ones on "
                      f"{withdrawal['batch_noise_mismatches']} tokens of {withdrawal['batch_noise_sample']} edits."]
    if diagnostics:
        lines += ["", "Which edit's neuron fired (judged from the adaptor layer's input; diagnostics.json):"]
        for name in ("es", "ps"):
            if name in diagnostics:
                parts = [f"{g}: {v['cases']} cases, accuracy {_fmt(v['accuracy'])}"
                         for g, v in diagnostics[name].items() if v["cases"]]
                lines.append(f"- {name}: " + "; ".join(parts))
        for name in ("locality", "ns"):
            if name in diagnostics:
                d = diagnostics[name]
                lines.append(f"- {name}: a neuron fired on {d['fired']} of {d['cases']} cases; prediction changed on "
                             f"{d['changed_where_fired']} of them (and on {d['changed_where_not_fired']} where none fired)")
        if "withdrawal" in diagnostics:
            parts = [f"{g}: {v['cases']} cases, {_fmt(v['as_unedited'] / v['cases'] if v['cases'] else None)} as unedited"
                     for g, v in diagnostics["withdrawal"].items()]
            lines.append("- after withdrawing an edit, on its prompt's cases: " + "; ".join(parts))
    fails = [k for k in range(len(records)) if not all(p == y for p, y in edited["es"][k])][:10]
    if fails:
        lines += ["", "First ES failures (prompt -> target: teacher-forced prediction | generation):"]
        for k in fails:
            pred = tok.decode([p for p, _ in edited["es"][k]])
            lines.append(f"- #{k} {records[k].prompt!r} -> {records[k].target!r}: {pred!r} | {gen_texts['es'][k]!r}")
    pfails = [k for k in range(len(records)) if not all(p == y for p, y in edited["ps"][k])][:10]
    if pfails:
        lines += ["", "First PS failures (paraphrase -> target: teacher-forced prediction):"]
        for k in pfails:
            pred = tok.decode([p for p, _ in edited["ps"][k]])
            lines.append(f"- #{k} {records[k].paraphrase!r} -> {records[k].target!r}: {pred!r}")
    lfails = [k for k in range(len(records))
              if any(pb != pe for (pb, _), (pe, _) in zip(base["locality"][k], edited["locality"][k]))][:10]
    if lfails:
        lines += ["", "First locality changes (probe: unedited | edited prediction):"]
        for k in lfails:
            lines.append(f"- #{k} {records[k].loc_prompt!r}: {tok.decode([p for p, _ in base['locality'][k]])!r} | "
                         f"{tok.decode([p for p, _ in edited['locality'][k]])!r}")
    lines += ["", "```json", json.dumps(metrics, indent=2), "```", ""]
    (out / "report.md").write_text("\n".join(lines))


def _argv_of(args) -> list[str]:
    parts = ["--dataset", args.dataset, "--split", args.split, "--method", args.method]
    if args.n is not None:
        parts += ["--n", str(args.n)]
    if args.retrofit:
        parts.append("--retrofit")
    if args.layer is not None:
        parts += ["--layer", str(args.layer)]
    for item in args.config:
        parts += ["--config", item]
    if args.withdraw_sample is not None:
        parts += ["--withdraw-sample", str(args.withdraw_sample)]
    if getattr(args, "eval_sample", None) is not None:
        parts += ["--eval-sample", str(args.eval_sample)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    parts += ["--out", str(args.out)]
    return parts


# -- sweeps ------------------------------------------------------------------------------------------------
def sweep(args, backbone) -> dict:
    from copy import copy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sweep == "edits":
        whole = len(datasets.load(args.dataset, args.split, None, datasets.data_root(args.data_dir)))
        if args.points:
            points = [int(p) for p in args.points.split(",")]
        else:
            points = sorted({p for p in (10, 100, 1000) if p < whole} | {whole})
        if args.n is not None:
            points = [p for p in points if p <= args.n]
        x_name = "n"
    else:
        layers = backbone.num_layers
        if args.points:
            points = [int(p) for p in args.points.split(",")]
        else:
            points = sorted(set(range(0, layers, args.layer_step)) | {layers - 1})
        x_name = "layer"
    rows = []
    for p in tqdm(points, desc=f"sweep {args.sweep}"):
        sub = copy(args)
        sub.sweep = None
        if args.sweep == "edits":
            sub.n = p
        else:
            sub.layer = p
            sub.n = args.n if args.n is not None else 100
        sub.out = str(out / f"{x_name}{p}")
        done, made_by = Path(sub.out) / "metrics.json", Path(sub.out) / "argv.json"
        argv = _argv_of(sub)
        if getattr(args, "resume", False) and done.exists() and made_by.exists() \
                and json.loads(made_by.read_text()) == argv:
            m = json.loads(done.read_text())  # the same point, finished before
        else:
            m = evaluate(sub, backbone)
            made_by.write_text(json.dumps(argv) + "\n")
        rows.append({x_name: p, **m})
        (out / "sweep.json").write_text(json.dumps({"sweep": args.sweep, "method": args.method,
                                                    "dataset": args.dataset, "split": args.split,
                                                    "points": rows}, indent=2) + "\n")
    _plot_sweep(out, args, x_name, rows)
    _sweep_markdown(out, args, x_name, rows)
    return {"sweep": args.sweep, "method": args.method, "dataset": args.dataset, "split": args.split,
            "points": rows}


def _plot_sweep(out: Path, args, x_name: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = [r[x_name] for r in rows]
    for key, label in (("es", "ES"), ("ps", "PS"), ("ns", "NS"), ("locality", "locality"), ("es_gen", "ES (gen)")):
        ax.plot(xs, [r[key] for r in rows], marker="o", label=label)
    if x_name == "n":
        ax.set_xscale("log")
        ax.set_xlabel("edits active at once")
    else:
        ax.set_xlabel("adaptor layer" if args.method == "ireva" else "layer")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    n_text = "" if x_name == "n" else f", {rows[0]['n_edits']} edits"
    ax.set_title(f"{args.method} on {args.dataset} ({args.split}{n_text})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"sweep_{args.sweep}.png")
    plt.close(fig)


def _sweep_markdown(out: Path, args, x_name: str, rows: list[dict]) -> None:
    keys = ["es", "ps", "locality", "es_gen", "ps_gen", "ns", "rs", "con", "insert_seconds_per_edit"]
    lines = [f"# sweep over {x_name}: {args.method} on {args.dataset} ({args.split})", "",
             f"command: `editserve eval --sweep {args.sweep} " + " ".join(_argv_of(args)) + "`", "",
             "| " + " | ".join([x_name] + keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([str(r[x_name])] + [_fmt(r[k]) for k in keys]) + " |")
    lines += ["", f"![sweep](sweep_{args.sweep}.png)", ""]
    (out / "sweep.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.method == "serac":  # fail before the model loads if SERAC is not there
        from evaluation.systems import SeracSystem  # noqa: F401
        import importlib

        try:
            importlib.import_module("editors.serac")
        except Exception as exc:  # noqa: BLE001
            raise SystemExit(f"--method serac: editors.serac cannot be imported yet ({type(exc).__name__}: {exc})")
    if args.retrofit:
        import inspect

        from editors.ireva.model import IrevaEditor

        if args.method != "ireva":
            raise SystemExit("--retrofit applies to --method ireva only")
        if "retrofit" not in inspect.signature(IrevaEditor.insert).parameters:
            raise SystemExit("--retrofit: IrevaEditor.insert has no retrofit parameter yet; nothing to evaluate")
    backbone = load_backbone_for(args)
    if args.sweep:
        result = sweep(args, backbone)
    else:
        result = evaluate(args, backbone, started)
    print(json.dumps(result))
    return 0
