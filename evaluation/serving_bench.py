"""`editserve bench serving`: what a client of a real server process on 127.0.0.1 sees.

    editserve bench serving --out runs/serving [--parts first_token,load,replicas] [--requests 20]

first_token: for the same prompts, the time to the first streamed token of a `stream: true` /generate
against the time of a whole one-token non-streamed /generate, alternating the two so that the machine's
noise falls on both alike. The bar: ratio of medians <= 1.2. Its server runs on --threads (default 1).

load: tokens/s and latency under 1, 4, 8, 16 closed-loop clients (--clients), beside plain transformers
batched on the same weights and, with --reference llamacpp, llama.cpp on the same GGUF file
(evaluation/llamacpp_ref.py); on a server of its own, quantised as --quant says (default:
EDITSERVE_QUANT), on --threads (default: the machine's core count); with --edits N, a twin server
takes turns with it before and after N real inserts into the twin (evaluation/load_bench.py). Also
writes <out>/load.png.

replicas: the lag of an edit made on one of two servers sharing a PostgreSQL database until the other
applies it (evaluation/replica_bench.py; --edits changes, --database-url or a throwaway server).

Writes <out>/serving.json (the parts that ran) and prints it as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from editserve.client import Client
from evaluation import datasets, load_bench, options, replica_bench
from evaluation.server import Server

PARTS = ("first_token", "load", "replicas")


def first_token(url: str, prompts: list[str], stream_tokens: int) -> dict:
    one_token, first_streamed = [], []
    with Client(url) as client:
        client.generate(prompts[0], max_new_tokens=1)  # warm-up: first-call allocations, caches
        for prompt in prompts:
            t0 = time.perf_counter()
            client.generate(prompt, max_new_tokens=1)
            one_token.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in client.stream_generate(prompt, max_new_tokens=stream_tokens):
                first_streamed.append(time.perf_counter() - t0)
                break  # the stream is closed here; the server stops generating when it notices
    return {
        "one_token_request_ms": 1000 * statistics.median(one_token),
        "first_streamed_token_ms": 1000 * statistics.median(first_streamed),
        "ratio": statistics.median(first_streamed) / statistics.median(one_token),
        "requests_each": len(prompts),
        "stream_max_new_tokens": stream_tokens,
    }


def parse(argv):
    ap = argparse.ArgumentParser(prog="editserve bench serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--parts", default="first_token,load", help=f"comma-separated, of: {', '.join(PARTS)} (default the first two)"
    )
    ap.add_argument("--requests", type=int, default=20, help="first_token: requests of each kind")
    ap.add_argument("--stream-tokens", type=int, default=16, help="first_token: max_new_tokens of the stream")
    ap.add_argument("--clients", default="1,4,8,16", help="load: levels of concurrent clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="load: seconds per level (and per batch size)")
    ap.add_argument("--tokens", type=int, default=16, help="load: max_new_tokens of each request")
    ap.add_argument(
        "--prompts", choices=("counterfact", "nq"), default="counterfact", help="load: the clients' prompts"
    )
    ap.add_argument(
        "--edits", type=int, default=None, help="load: real iReVa inserts made first (0); replicas: changes timed (100)"
    )
    ap.add_argument(
        "--reference",
        choices=("transformers", "llamacpp"),
        default="transformers",
        help="load: beside plain transformers, also llama.cpp on the same GGUF file (make llamacpp installs it)",
    )
    ap.add_argument("--database-url", default=None, help="replicas: a PostgreSQL database (default: a throwaway one)")
    ap.add_argument(
        "--threads", type=int, default=None, help="the server's torch threads (first_token: 1; load: all cores)"
    )
    ap.add_argument("--data-dir", default=None, help="prompts from here (default $EDITSERVE_EVAL_DATA)")
    options.add_model(ap)
    options.add_cache_dir(ap)
    return options.resolve(ap.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"editserve bench serving: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = datasets.data_root(args.data_dir)
    result = {"machine_cpus": os.cpu_count()}
    if "first_token" in parts:
        prompts = [q.prompt for q in datasets.nq("dev", root)][: args.requests]
        threads = args.threads or 1
        result["server_torch_threads"] = threads
        env = {
            "EDITSERVE_TORCH_THREADS": str(threads),
            "EDITSERVE_MODEL": args.model,
            "EDITSERVE_CACHE_DIR": args.cache_dir,
            "EDITSERVE_QUANT": args.quant,
        }
        with tempfile.TemporaryDirectory() as tmp:
            with Server(Path(tmp) / "data", env=env, log=out / "server.log") as server:
                result["first_token"] = first_token(server.url, prompts, args.stream_tokens)
    if "load" in parts:
        result["load"] = load_bench.run(argparse.Namespace(**{**vars(args), "edits": args.edits or 0}), out, root)
    if "replicas" in parts:
        edits = args.edits if args.edits is not None else 100
        result["replicas"] = replica_bench.run(argparse.Namespace(**{**vars(args), "edits": edits}), out, root)
    (out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
