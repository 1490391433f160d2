"""Measure SERAC end to end: ES / PS / locality (token-level, teacher-forced) and routing cost.

    python -m editors.serac.evaluate --dataset zsre --start 0 --count 300 [--adapter DIR | --no-adapter]

All `count` edits are in memory at once. Each query is routed first; routed queries are scored through
the counterfactual model (template + adapter), the others through the base model. Locality compares
the full SERAC path on each record's out-of-scope probe with the base model, token by token.
"""
from __future__ import annotations

import argparse
import os
import contextlib
import time

import torch

from editors.backbone import DEFAULT_MODEL, encode_prompt, encode_target, load_backbone
from editors.serac.config import SeracConfig
from editors.serac.data import counterfact, zsre
from editors.serac.train import shared_adapter_dir
from editors.serac.model import SeracEditor
from evaluation.teacher_forcing import next_tokens


@torch.no_grad()
def teacher_forced(backbone, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[list[int]]:
    """Greedy prediction at each target position of (prompt ids, target ids), one forward per pair
    (the base model and the LoRA act on every position alike, so this equals one forward per prefix)."""
    pad, out = backbone.tokenizer.pad_token_id, []
    for start in range(0, len(pairs), batch_size):
        chunk = [p + t[:-1] for p, t in pairs[start:start + batch_size]]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=backbone.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=backbone.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = backbone.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        pred = logits.argmax(-1).cpu()
        for row, (p, t) in enumerate(pairs[start:start + batch_size]):
            first = width - len(t)  # position predicting the first target token (left padding)
            out.append(pred[row, first: first + len(t)].tolist())
    return out


def score(editor: SeracEditor, queries: list[str], targets: list[str], routes: list[str | None]):
    """Per-query lists of (predicted, expected) target tokens through the SERAC path."""
    tok, bb = editor.backbone.tokenizer, editor.backbone
    plain, counter = [], []
    for qi, (q, t, r) in enumerate(zip(queries, targets, routes)):
        text = q if r is None else editor.counterfactual_prompt(r, q)
        (plain if r is None else counter).append((qi, (encode_prompt(tok, text), encode_target(tok, text, t))))
    out = [[] for _ in queries]
    for group, ctx in ((plain, contextlib.nullcontext()), (counter, editor.counterfactual())):
        with ctx:
            preds = teacher_forced(bb, [pair for _, pair in group])
        for (qi, (_, t_ids)), p in zip(group, preds):
            out[qi] = list(zip(p, t_ids))
    return out


def token_acc(per_query) -> float:
    pairs = [p == y for q in per_query for p, y in q]
    return sum(pairs) / max(len(pairs), 1)


def exact(per_query) -> float:
    return sum(all(p == y for p, y in q) for q in per_query) / max(len(per_query), 1)


def measure(editor: SeracEditor, records, ids: list[str]) -> dict:
    t0 = time.perf_counter()
    r_prompt = [editor.route(r.prompt) for r in records]
    r_para = [editor.route(r.paraphrase) for r in records]
    r_loc = [editor.route(r.loc) for r in records]
    route_time = (time.perf_counter() - t0) / (3 * len(records))
    es = score(editor, [r.prompt for r in records], [r.target for r in records], r_prompt)
    ps = score(editor, [r.paraphrase for r in records], [r.target for r in records], r_para)
    forced = score(editor, [r.paraphrase for r in records], [r.target for r in records], ids)
    # Locality: predictions of the SERAC path vs the base model on the loc probe's teacher-forced cases.
    base = score(editor, [r.loc for r in records], [r.loc_ans for r in records], [None] * len(records))
    serac = score(editor, [r.loc for r in records], [r.loc_ans for r in records], r_loc)
    same = [pb == ps_ for qb, qs in zip(base, serac) for (pb, _), (ps_, _) in zip(qb, qs)]
    return {
        "edits": len(records),
        "route_prompt_own": sum(r == i for r, i in zip(r_prompt, ids)) / len(ids),
        "route_para_own": sum(r == i for r, i in zip(r_para, ids)) / len(ids),
        "route_para_other": sum(r is not None and r != i for r, i in zip(r_para, ids)) / len(ids),
        "route_loc_in": sum(r is not None for r in r_loc) / len(ids),
        "ES_token": token_acc(es), "ES_exact": exact(es),
        "PS_token": token_acc(ps), "PS_exact": exact(ps),
        "PS_token_forced": token_acc(forced), "PS_exact_forced": exact(forced),
        "locality": sum(same) / max(len(same), 1),
        "route_ms_per_query": 1000 * route_time,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["zsre", "cf-val", "cf-train"], default="zsre")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--adapter", default=None,
                    help="LoRA adapter directory (train-serac output); default: the shared one set-up trains (train-serac --shared)")
    ap.add_argument("--no-adapter", action="store_true", help="the prompted backbone alone")
    ap.add_argument("--template", default=None)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dataset == "zsre":
        records = zsre(args.start, args.start + args.count)
    else:
        records = counterfact(args.dataset.split("-")[1], args.start, args.start + args.count)
    if args.adapter is None and not args.no_adapter:
        args.adapter = str(shared_adapter_dir(os.environ.get("EDITSERVE_CACHE_DIR", "~/.cache/editserve"), DEFAULT_MODEL))
    cfg = SeracConfig(adapter_dir=args.adapter, use_adapter=not args.no_adapter)
    if args.template:
        cfg.template = args.template.encode().decode("unicode_escape")
    if args.threshold is not None:
        cfg.threshold = args.threshold
    editor = SeracEditor(load_backbone(device=torch.device("cpu")), cfg)
    t0 = time.perf_counter()
    ids = [f"e{i}" for i in range(len(records))]
    for i, r in zip(ids, records):
        editor.insert(i, r.prompt, r.target)
    insert_ms = 1000 * (time.perf_counter() - t0) / len(records)
    out = measure(editor, records, ids)
    out["insert_ms"] = insert_ms
    out["adapter"] = str(cfg.adapter_dir) if editor.adapter is not None else None
    out["template"] = editor.template
    out["threshold"] = cfg.threshold
    for k, v in out.items():
        print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v!r}")
    return out


if __name__ == "__main__":
    main()
