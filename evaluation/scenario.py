"""`editserve scenario`: SERAC over HTTP against a real server process (`python -m app.cli serve` on
127.0.0.1, evaluation/server.py).

Starts the server on a fresh data dir (default settings unless --env), inserts the first N zsRE train
records (the held-out dev records 0..N-1) with "method": "serac", and counts, with 12-token greedy
generations: prompts and paraphrases whose answer starts with the target and names the edit on every
token; 12 unrelated prompts (10 NQ questions, 2 completions) answered exactly as before the edits;
the same after a restart; and the first 5 edits' prompts answered as before once those edits are
withdrawn. Prints one JSON line at the end (and which adapter the server said it loaded).

    editserve scenario [--n 30] [--data-dir DIR] [--env EDITSERVE_SERAC__USE_ADAPTER=false]
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from evaluation import datasets
from evaluation.server import Server

UNRELATED_EXTRA = ["The capital of France is", "Water is made of hydrogen and"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="editserve scenario", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--data-dir", default=None, help="server data dir; default: a fresh temporary directory")
    ap.add_argument("--eval-data", default=None, help="default $EDITSERVE_EVAL_DATA or ../shared/data")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    ap.add_argument("--withdraw", type=int, default=5)
    args = ap.parse_args(argv)
    env = {"EDITSERVE_TORCH_THREADS": "1", **dict(kv.split("=", 1) for kv in args.env)}
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="serac-scenario-"))
    root = datasets.data_root(args.eval_data)
    recs = datasets.zsre("dev", root)[: args.n]
    # the first 10 NQ-open dev questions as a user would ask them (without zsRE's "nq question: " prefix)
    unrelated = [q.prompt.removeprefix(datasets.NQ_PREFIX) for q in datasets.nq("dev", root)[:10]] + UNRELATED_EXTRA

    def ok(out: dict, target: str, edit_id: str) -> bool:
        return out["text"].strip().startswith(target) and all(t["edit_id"] == edit_id for t in out["tokens"])

    t0 = time.time()
    server = Server(data_dir, env)
    with server:
        before = {q: server.generate(q) for q in unrelated + [r.prompt for r in recs[: args.withdraw]]}
        ids = [server.call("POST", "/edits", {"prompt": r.prompt, "target": r.target, "method": "serac"})["id"]
               for r in recs]
        prompt_ok = [ok(server.generate(r.prompt), r.target, i) for r, i in zip(recs, ids)]
        para_out = [server.generate(r.paraphrase) for r in recs]
        para_ok = [ok(o, r.target, i) for o, r, i in zip(para_out, recs, ids)]
        unrelated_same = sum(server.generate(q) == before[q] for q in unrelated)
    with server:  # the same data dir, a new process
        restart_prompt = sum(ok(server.generate(r.prompt), r.target, i) for r, i in zip(recs, ids))
        restart_para = sum(ok(server.generate(r.paraphrase), r.target, i) for r, i in zip(recs, ids))
        restart_unrelated = sum(server.generate(q) == before[q] for q in unrelated)
        for i in ids[: args.withdraw]:
            server.call("DELETE", f"/edits/{i}")
        withdrawn_back = sum(server.generate(r.prompt) == before[r.prompt] for r in recs[: args.withdraw])
        kept = sum(ok(server.generate(r.prompt), r.target, i)
                   for r, i in zip(recs[args.withdraw:], ids[args.withdraw:]))
    loaded = re.findall(r"SERAC[^\n]*(?:adapter|prompted backbone)[^\n]*", server.log.read_text())
    result = {
        "n": args.n, "env": env, "data_dir": str(data_dir), "server_said": loaded[-1] if loaded else None,
        "prompts": sum(prompt_ok), "paraphrases": sum(para_ok),
        "unrelated_unchanged": unrelated_same, "unrelated": len(unrelated),
        "after_restart": {"prompts": restart_prompt, "paraphrases": restart_para,
                          "unrelated_unchanged": restart_unrelated},
        "withdrawn": args.withdraw, "withdrawn_original_back": withdrawn_back,
        "others_still_edited": kept, "seconds": round(time.time() - t0),
        "misses": [{"kind": "prompt", "query": r.prompt, "target": r.target}
                   for r, good in zip(recs, prompt_ok) if not good]
                  + [{"kind": "paraphrase", "query": r.paraphrase, "target": r.target, "got": o["text"]}
                     for r, o, good in zip(recs, para_out, para_ok) if not good],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
