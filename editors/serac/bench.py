"""Time per query of SERAC's scope classifier with 0 and N edits in memory.

    python -m editors.serac.bench [--edits 10000] [--queries 200]

Memory: the first 300 zsRE train records as real edits plus random unit vectors up to --edits. Queries:
their paraphrases and NQ dev questions, one at a time as a server sees them. Reports route() (embed +
nearest search + threshold), and the embedding and the matrix product apart.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from editors.serac.config import SeracConfig
from editors.serac.data import nq_questions, zsre
from editors.serac.memory import EditMemory
from editors.serac.model import shared_embedder


class _NoBackbone:  # route() never touches the backbone
    model = None


def ms(fn, items) -> float:
    times = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv=None) -> dict:
    from editors.serac.model import SeracEditor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SeracConfig(use_adapter=False)
    editor = SeracEditor(_NoBackbone(), cfg, embedder=shared_embedder(cfg.embedder_package, cfg.embedder_max_length))
    records = zsre(0, 300)
    half = args.queries // 2
    queries = [r.paraphrase for r in records[:half]] + nq_questions(0, args.queries - half)
    out = {"route_ms_0_edits": ms(editor.route, queries)}

    for i, r in enumerate(records):
        editor.memory.put(f"z{i}", editor.embedder([r.prompt])[0])
        editor.edits[f"z{i}"] = (r.prompt, r.target)
    g = torch.Generator().manual_seed(0)
    filler = torch.nn.functional.normalize(torch.randn(args.edits - len(records), editor.embedder.dim, generator=g), dim=-1)
    t0 = time.perf_counter()
    for i, v in enumerate(filler):
        editor.memory.put(f"r{i}", v)
    out["put_us_per_edit"] = 1e6 * (time.perf_counter() - t0) / len(filler)
    out["edits"] = len(editor.memory)
    out["capacity"] = editor.memory.matrix.shape[0]
    out[f"route_ms_{args.edits}_edits"] = ms(editor.route, queries)
    out["embed_ms"] = ms(lambda q: editor.embedder([q]), queries)
    vecs = editor.embedder(queries)
    out[f"search_ms_{args.edits}_edits"] = ms(editor.memory.nearest, list(vecs))
    routed = [editor.route(q) for q in queries]
    out["paraphrases_routed_to_own"] = sum(r == f"z{i}" for i, r in enumerate(routed[:half])) / half
    out["nq_routed_in"] = sum(r is not None for r in routed[half:]) / (args.queries - half)
    for k, v in out.items():
        print(f"{k:>28}: {v:.4f}" if isinstance(v, float) else f"{k:>28}: {v}")
    return out


if __name__ == "__main__":
    main()
