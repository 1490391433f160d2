"""Fit the scope classifier's threshold on the train files and print the numbers.

    python -m editors.serac.fit [--zsre-start 300] [--cf-count 2000] [--nq-count 1000]

Memory: the edit prompts of zsre_mend_train-1k (from --zsre-start on; earlier records are held out
for measurement) and of the first --cf-count CounterFact train records, all at once. In scope: each
edit's paraphrase, counted right only when its nearest edit is its own and the similarity passes.
Out of scope: NQ dev questions; zsRE `loc` probes; CounterFact locality prompts (the hard negatives:
same relation, another subject); each edit's own prompt with that edit left out ("other edits'
prompts"). The threshold maximises the balanced accuracy (mean in-scope recall over the two datasets,
averaged with the mean rejection over the four negative groups). Then it is checked on held-out
splits: counterfact-val and the held-out zsRE records.
"""
from __future__ import annotations

import argparse

import torch

from editors.serac.config import SeracConfig
from editors.serac.data import counterfact, nq_questions, zsre
from editors.serac.model import shared_embedder


def groups(embed, zs, cf, nq) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """name -> (max similarity over the memory, whether the nearest edit is the right one | None)."""
    mem = torch.cat([embed([r.prompt for r in zs]), embed([r.prompt for r in cf])])
    own = torch.arange(len(mem))
    out = {}

    def best(queries):
        return (queries @ mem.T).max(1)

    v, i = best(embed([r.paraphrase for r in zs]))
    out["in: zsRE paraphrase"] = (v, i == own[: len(zs)])
    v, i = best(embed([r.paraphrase for r in cf]))
    out["in: CF paraphrase"] = (v, i == own[len(zs):])
    out["out: NQ question"] = (best(embed(nq))[0], None)
    out["out: zsRE loc"] = (best(embed([r.loc for r in zs]))[0], None)
    out["out: CF neighbourhood"] = (best(embed([r.loc for r in cf]))[0], None)
    s = mem @ mem.T
    s.fill_diagonal_(-1.0)
    out["out: other edits' prompts"] = (s.max(1).values, None)
    return out


def rates(gs, t: float) -> dict[str, float]:
    return {k: float(((v >= t) & c).float().mean() if c is not None else (v < t).float().mean())
            for k, (v, c) in gs.items()}


def balanced(r: dict[str, float]) -> float:
    ins = [v for k, v in r.items() if k.startswith("in")]
    outs = [v for k, v in r.items() if k.startswith("out")]
    return 0.5 * (sum(ins) / len(ins) + sum(outs) / len(outs))


def table(gs, thresholds) -> None:
    names = list(gs)
    print("threshold  " + "  ".join(f"{n[n.index(':') + 2:][:14]:>14}" for n in names) + "  balanced")
    for t in thresholds:
        r = rates(gs, t)
        print(f"{t:9.3f}  " + "  ".join(f"{r[n]:14.3f}" for n in names) + f"  {balanced(r):8.4f}")


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zsre-start", type=int, default=300)
    ap.add_argument("--cf-count", type=int, default=2000)
    ap.add_argument("--nq-count", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SeracConfig()
    embed = shared_embedder(cfg.embedder_package, cfg.embedder_max_length)

    train = groups(embed, zsre(args.zsre_start), counterfact("train", 0, args.cf_count), nq_questions(0, args.nq_count))
    for name, (v, c) in train.items():
        q = torch.quantile(v, torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99]))
        extra = f"  nearest is own {float(c.float().mean()):.3f}" if c is not None else ""
        print(f"{name:28s} n={len(v):5d}  similarity q01/q05/q50/q95/q99 " + "/".join(f"{x:.3f}" for x in q) + extra)
    grid = torch.arange(0.50, 0.90, 0.005).tolist()
    best = max(grid, key=lambda t: balanced(rates(train, t)))
    print(f"\ntrain (memory of {len(zsre(args.zsre_start)) + args.cf_count} edits):")
    table(train, sorted(set([round(x, 3) for x in grid[::5]] + [round(best, 3), cfg.threshold])))
    print(f"\nbest threshold on train: {best:.3f} (balanced accuracy {balanced(rates(train, best)):.4f}); "
          f"configured default: {cfg.threshold}")

    held = groups(embed, zsre(0, args.zsre_start), counterfact("val", 0, 1000),
                  nq_questions(args.nq_count, 2 * args.nq_count))
    print(f"\nheld out (zsRE train[:{args.zsre_start}] + counterfact-val[:1000], NQ dev "
          f"[{args.nq_count}:{2 * args.nq_count}]):")
    table(held, sorted({round(best, 3), cfg.threshold}))
    return best


if __name__ == "__main__":
    main()
