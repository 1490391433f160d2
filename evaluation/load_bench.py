"""The `load` part of `editserve bench serving`: a real server process under concurrent clients, beside
plain transformers on the same weights.

    editserve bench serving --parts load --out runs/load [--clients 1,4,8,16] [--seconds 20] [--tokens 16]
                            [--threads N] [--edits N]

Server: `editserve serve` on 127.0.0.1 with EDITSERVE_TORCH_THREADS = --threads (default: the machine's
core count). Every level is measured with no edits (`levels`). With --edits N a second, identical
server (its twin) runs beside it, and the edits' cost is measured as the two take turns: the machine
drifts by several per cent over minutes (docs/results.md), more than holding the edits costs, so the
levels with and without are interleaved rather than run minutes apart. Per level, windows of --seconds
/ 2 in the order first, twin, twin, first (a linear drift falls alike on both): once with neither
holding edits (`twins`: how alike the two processes are), then after N real iReVa inserts into the twin
through POST /edits (zsRE dev prompts, then CounterFact dev; no synthesised edits, however many: their
time is recorded; `levels_with_edits`). The edits' ratio is the twin's tokens over the first's with the
edits, divided by the same ratio without them, per level and pooled over the levels (their geometric
mean: in one level's minute two identical servers can read several per cent apart, docs/results.md).
Then every edit is withdrawn (DELETE /edits/{id}, timed).
No client asks a prompt the inserts may edit (`load_prompts`): what is measured is what holding the
edits costs every other answer (the scope decision, the neurons beside the MLP).

For each level of clients, that many threads of this process, each with its own
editserve.client.Client, send POST /generate (a CounterFact dev prompt, which the model continues for
the whole budget, or with --prompts nq an NQ dev question, whose answers mostly end after a few
tokens; max_new_tokens --tokens) in a closed loop for --seconds: send, wait for the answer, send the next.
requests/s and tokens/s count the answers completed inside the window (tokens: those in the answers);
the requests still in flight when it closes are waited for, and their latencies count in p50/p95 (of
the 200 answers). Any other answer (a 503 when the server's queue is full, a timeout) is an error,
counted by status.

Reference, once the server is stopped: editors.generation.generate_batch (greedy, left-padded) on the
model load_backbone loads from the same cache dir, in this process with the same thread count, at batch
sizes equal to the client levels, the same token budget, for --seconds each.

Writes result["load"] (serving.json) and <out>/load.png. Timings move with machine load; never asserted.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from editserve.client import Client, EditServeError
from evaluation import datasets, llamacpp_ref
from evaluation.server import Server

FEW_HUNDRED = 300  # above this many edits the inserts alone take many minutes: said before they start
SPARE_PAIRS = 100  # pairs beyond --edits that may stand in for refused ones (never the clients' prompts)


def load_prompts(kind: str, root: Path, edits: int = 0) -> list[str]:
    """The clients' prompts: CounterFact dev prompts (sentences the model continues for the whole token
    budget, so every request costs alike and latencies compare), or NQ dev questions (most answers end
    after a few tokens, at the model's end of text). None that `edits` inserts may edit: an edit's own
    prompt is in its scope, and what is measured is the edits' cost to every other answer."""
    if kind == "nq":
        prompts = [q.prompt for q in datasets.nq("dev", root)]
    else:
        prompts = [r.prompt for r in datasets.load("counterfact", "dev", None, root)]
    edited = {p for p, _ in edit_pairs(root, edits)} if edits else set()
    return [p for p in prompts if p not in edited]


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def edit_pairs(root: Path, n: int) -> list[tuple[str, str]]:
    """The (prompt, target) pairs the inserts may use: the first n, and SPARE_PAIRS more."""
    return datasets.dev_edit_pairs(root)[: n + SPARE_PAIRS]


def make_edits(url: str, n: int, root: Path) -> dict:
    """n real iReVa inserts through POST /edits; a refused pair (422, or 409 for a prompt already edited)
    is skipped and counted."""
    pairs = edit_pairs(root, n)  # the later ones stand in for refused pairs
    if n > len(pairs):
        raise SystemExit(f"--edits {n}: only {len(pairs)} zsRE/CounterFact dev pairs to insert (real inserts only)")
    if n > FEW_HUNDRED:
        print(f"load: {n} edits: this bench makes real inserts only (one POST /edits each); this takes a while")
    made, refused, t0 = 0, 0, time.perf_counter()
    with Client(url) as client:
        for prompt, target in pairs:
            if made == n:
                break
            try:
                client.create_edit(prompt, target, method="ireva")
                made += 1
            except EditServeError as err:
                if err.status not in (409, 422):
                    raise
                refused += 1
    seconds = time.perf_counter() - t0
    if made < n:
        raise SystemExit(f"--edits {n}: only {made} inserts succeeded ({refused} refused)")
    return {
        "n_edits": made,
        "how": "real iReVa inserts through POST /edits (zsRE dev, then CounterFact dev); none synthesised",
        "insert_seconds_total": seconds,
        "insert_seconds_each": seconds / max(made, 1),
        "refused": refused,
    }


def level(url: str, prompts: list[str], clients: int, seconds: float, tokens: int) -> dict:
    """`clients` closed-loop clients for `seconds`; each request is (start, end, status, tokens)."""
    done: list[tuple[float, float, int | str, int]] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    window: dict[str, float] = {}

    def client_loop(i: int) -> None:
        with Client(url) as client:
            ready.wait()
            k = 0
            while time.perf_counter() < window["end"]:
                prompt = prompts[(i + k * clients) % len(prompts)]
                k += 1
                t0 = time.perf_counter()
                status: int | str = 200
                n = 0
                try:
                    n = len(client.generate(prompt, max_new_tokens=tokens).tokens)
                except EditServeError as err:
                    status = err.status
                except Exception as err:  # a timeout, a dropped connection: an error too, by its kind
                    status = type(err).__name__
                with lock:
                    done.append((t0, time.perf_counter(), status, n))
                if status != 200:
                    time.sleep(0.05)  # a refusing server is not hammered in a tight loop

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + seconds
    ready.wait()
    for t in threads:
        t.join()
    start, end = window["start"], window["end"]
    ok = [r for r in done if r[2] == 200]
    inside = [r for r in ok if r[1] <= end]
    latencies = [r[1] - r[0] for r in ok]
    errors: dict[str, int] = {}
    for r in done:
        if r[2] != 200:
            errors[str(r[2])] = errors.get(str(r[2]), 0) + 1
    return {
        "clients": clients,
        "started_s": start,  # time.perf_counter() at the window's start: where the level sits in time
        "seconds": end - start,
        "requests_per_s": len(inside) / (end - start),
        "tokens_per_s": sum(r[3] for r in inside) / (end - start),
        "p50_ms": None if not latencies else 1000 * _pct(latencies, 50),
        "p95_ms": None if not latencies else 1000 * _pct(latencies, 95),
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        "requests_ok_in_window": len(inside),
        "requests_ok_total": len(ok),
        "tokens_per_request": statistics.mean(r[3] for r in ok) if ok else None,
        "drain_s": max((r[1] for r in done), default=end) - end,
    }


def withdraw_all(url: str) -> dict:
    """Withdraw every active edit through DELETE /edits/{id}."""
    with Client(url) as client:
        ids: list[str] = []
        while True:
            page = client.list_edits(status="active", limit=100, offset=len(ids))
            ids += [e.id for e in page.data]
            if len(page.data) < 100:
                break
        t0 = time.perf_counter()
        for edit_id in ids:
            client.withdraw_edit(edit_id)
    return {"n_withdrawn": len(ids), "withdraw_seconds_total": time.perf_counter() - t0}


def levels(url: str, prompts: list[str], sizes: list[int], args, label: str) -> list[dict]:
    out = []
    for clients in sizes:
        out.append(level(url, prompts, clients, args.seconds, args.tokens))
        print(f"load: {clients} clients{label}: {out[-1]['tokens_per_s']:.1f} tokens/s", flush=True)
    return out


def paired(first: str, twin: str, prompts: list[str], sizes: list[int], args, label: str) -> list[dict]:
    """Per level, windows of --seconds / 2 on `first`, `twin`, `twin`, `first`: the twin's tokens/s
    (and p95, the windows' mean) and its ratio to the first's over the same minutes."""
    out = []
    for clients in sizes:
        windows: dict[str, list[dict]] = {first: [], twin: []}
        for url in (first, twin, twin, first):
            windows[url].append(level(url, prompts, clients, args.seconds / 2, args.tokens))
        mine, theirs = windows[twin], windows[first]
        ratio = _ratio(sum(w["tokens_per_s"] for w in mine), sum(w["tokens_per_s"] for w in theirs))
        out.append(
            {
                "clients": clients,
                "tokens_per_s": statistics.mean(w["tokens_per_s"] for w in mine),
                "p95_ms": _mean_of(w["p95_ms"] for w in mine),
                "errors": sum(w["errors"] for w in mine + theirs),
                "requests_ok_total": sum(w["requests_ok_total"] for w in mine),
                "first_tokens_per_s": statistics.mean(w["tokens_per_s"] for w in theirs),
                "twin_over_first": ratio,
                "windows": {"first": theirs, "twin": mine},
            }
        )
        print(f"load: {clients} clients{label}: twin {out[-1]['tokens_per_s']:.1f} tokens/s, x{ratio:.3f} the first's")
    return out


def _mean_of(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def reference(model: str, cache_dir: str, prompts: list[str], sizes: list[int], seconds: float, tokens: int) -> dict:
    """Plain transformers: generate_batch on the same weights, batches of each size for `seconds`."""
    from editors.backbone import encode_prompt, load_backbone
    from editors.generation import generate_batch

    backbone = load_backbone(model, cache_dir)  # the device the server picks (no --device: CPU here)
    ids = [encode_prompt(backbone.tokenizer, p) for p in prompts]
    rows, k = [], 0
    for size in sizes:
        generate_batch(backbone, ids[:size], [tokens] * size)  # warm-up at this batch size, not counted
        made, batches, t0 = 0, 0, time.perf_counter()
        while batches == 0 or time.perf_counter() - t0 < seconds:
            chosen = [ids[(k + j) % len(ids)] for j in range(size)]  # the prompts in turn, as the clients
            k += size
            made += sum(len(row) for row in generate_batch(backbone, chosen, [tokens] * size))
            batches += 1
        dt = time.perf_counter() - t0
        rows.append({"batch": size, "tokens_per_s": made / dt, "batches": batches, "seconds_per_batch": dt / batches})
    return {"how": "editors.generation.generate_batch, greedy, left-padded, in the bench process", "rows": rows}


def _ratio(a, b):
    return a / b if a is not None and b else None


def ratios(levels: list[dict], ref: list[dict]) -> dict:
    at = {r["clients"]: r for r in levels}
    batch = {r["batch"]: r for r in ref}
    one, eight = at.get(1), at.get(8)
    return {
        "tokens_per_s_8_clients_over_1": _ratio(eight and eight["tokens_per_s"], one and one["tokens_per_s"]),
        "tokens_per_s_8_clients_over_plain_batch_8": _ratio(
            eight and eight["tokens_per_s"], 8 in batch and batch[8]["tokens_per_s"]
        ),
        "p95_8_clients_over_p50_1_client": _ratio(eight and eight["p95_ms"], one and one["p50_ms"]),
    }


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels, ref = result["levels"], result["reference"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["clients"] for r in levels], [r["tokens_per_s"] for r in levels], "o-", label="editserve serve")
    if "levels_with_edits" in result:
        edited = result["levels_with_edits"]
        label = f"editserve serve, {result['n_edits']} edits"
        ax.plot([r["clients"] for r in edited], [r["tokens_per_s"] for r in edited], "^-", label=label)
    ax.plot([r["batch"] for r in ref], [r["tokens_per_s"] for r in ref], "s--", label="plain transformers (batch)")
    if "llamacpp" in result:
        ax.axhline(result["llamacpp"]["tokens_per_s"], color="grey", linestyle=":", label="llama.cpp, one stream")
    ax.set_xlabel("concurrent clients / batch size")
    ax.set_ylabel("generated tokens/s")
    ax.set_xticks([r["clients"] for r in levels])
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"{result['max_new_tokens']} tokens per answer, {result['torch_threads']} torch threads",
        fontsize=10,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(result: dict) -> str:
    ref = {r["batch"]: r["tokens_per_s"] for r in result["reference"]["rows"]}
    over_llama = result["ratios"].get("tokens_per_s_over_llamacpp_single_stream", {})
    edited = {r["clients"]: r for r in result.get("levels_with_edits", [])}
    ratio = result["ratios"].get("tokens_per_s_with_edits_over_without", {})
    head = "clients  req/s  tokens/s  p50 ms  p95 ms  errors | plain transformers batch: tokens/s"
    if over_llama:
        head += " | ÷ llama.cpp 1 stream"
    lines = [head + (f" | twin with {result['n_edits']} edits: tokens/s  p95 ms  ratio" if edited else "")]
    if "llamacpp" in result:
        lines.insert(0, f"llama.cpp, one stream: {result['llamacpp']['tokens_per_s']:.1f} tokens/s")
    for r in result["levels"]:
        p50 = f"{r['p50_ms']:6.0f}" if r["p50_ms"] is not None else "     -"
        p95 = f"{r['p95_ms']:6.0f}" if r["p95_ms"] is not None else "     -"
        plain = f"{ref[r['clients']]:.1f}" if r["clients"] in ref else "-"
        line = f"{r['clients']:7d}  {r['requests_per_s']:5.2f}  {r['tokens_per_s']:8.1f}  {p50}  {p95}  "
        line += f"{r['errors']:6d} | {plain}"
        if over_llama:
            line += f" | {over_llama[str(r['clients'])]:.2f}"
        e = edited.get(r["clients"])
        if e is not None:
            line += f" | {e['tokens_per_s']:.1f}  {e['p95_ms'] or 0:.0f}  {ratio[str(r['clients'])]:.3f}"
        lines.append(line)
    pooled = result["ratios"].get("tokens_per_s_with_edits_over_without_all_levels")
    if pooled:
        lines.append(f"with {result['n_edits']} edits over without, the levels pooled: {pooled:.3f}")
    return "\n".join(lines)


def run(args, out: Path, root: Path) -> dict:
    """The load part: the server at each level, then the reference. args: serving_bench's."""
    sizes = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not sizes or sizes[0] < 1:
        raise SystemExit("--clients: positive integers, comma-separated")
    threads = args.threads or os.cpu_count() or 1
    prompts = load_prompts(args.prompts, root, args.edits)
    result = {
        "torch_threads": threads,
        "torch_threads_from": "--threads" if args.threads else "default: the machine's core count",
        "max_new_tokens": args.tokens,
        "prompts": args.prompts,
        "seconds_per_level": args.seconds,
        "model": args.model,
        "n_edits": 0,
        "note": "the client threads run in the bench process, on the same machine as the server",
        "loadavg_at_start": os.getloadavg(),  # other work on a shared machine moves every number
    }
    env = {
        "EDITSERVE_TORCH_THREADS": str(threads),
        "EDITSERVE_MODEL": args.model,
        "EDITSERVE_CACHE_DIR": args.cache_dir,
        "EDITSERVE_QUANT": args.quant,
    }
    result["quant"] = args.quant
    gguf = llamacpp_ref.gguf_of(args.model, args.cache_dir) if getattr(args, "reference", None) == "llamacpp" else None
    if gguf is not None and not llamacpp_ref.available():  # said before the minutes of the levels, not after
        raise SystemExit(f"--reference llamacpp: llama-cpp-python is not installed; {llamacpp_ref.INSTALL}")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        server = servers.enter_context(Server(Path(tmp) / "data", env=env, log=out / "server-load.log"))
        result["server_ready_s"] = server.ready_seconds
        twin = None
        if args.edits:
            twin = servers.enter_context(Server(Path(tmp) / "twin", env=env, log=out / "server-twin.log"))
        for url in [server.url] + ([twin.url] if twin else []):
            with Client(url) as client:
                client.generate(prompts[0], max_new_tokens=args.tokens)  # warm-up
        result["levels"] = levels(server.url, prompts, sizes, args, "")
        if twin is not None:
            result["twins"] = paired(server.url, twin.url, prompts, sizes, args, ", twins without edits")
            result["edits"] = make_edits(twin.url, args.edits, root)
            result["n_edits"] = result["edits"]["n_edits"]
            label = f", the twin with {args.edits} edits"
            result["levels_with_edits"] = paired(server.url, twin.url, prompts, sizes, args, label)
            result["withdrawn"] = withdraw_all(twin.url)
    # The server is stopped: the reference has the machine to itself, on the same thread count.
    import torch

    torch.set_num_threads(threads)
    result["reference"] = reference(args.model, args.cache_dir, prompts, sizes, args.seconds, args.tokens)
    result["ratios"] = ratios(result["levels"], result["reference"]["rows"])
    if gguf is not None:
        result["llamacpp"] = llamacpp_ref.run(gguf, prompts, args.seconds, args.tokens, threads)
        single = result["llamacpp"]["tokens_per_s"]
        result["ratios"]["tokens_per_s_over_llamacpp_single_stream"] = {
            str(r["clients"]): _ratio(r["tokens_per_s"], single) for r in result["levels"]
        }
    if "levels_with_edits" in result:
        pairs = list(zip(result["twins"], result["levels_with_edits"]))
        result["ratios"]["tokens_per_s_with_edits_over_without"] = {
            str(e["clients"]): _ratio(e["twin_over_first"], t["twin_over_first"]) for t, e in pairs
        }
        result["ratios"]["twins_without_edits"] = {str(t["clients"]): t["twin_over_first"] for t, _ in pairs}
        result["ratios"]["twin_with_edits_over_first"] = {str(e["clients"]): e["twin_over_first"] for _, e in pairs}
        # Two identical servers read several per cent apart in one level's minute: every level pooled
        per_level = [r for r in result["ratios"]["tokens_per_s_with_edits_over_without"].values() if r]
        result["ratios"]["tokens_per_s_with_edits_over_without_all_levels"] = (
            float(np.exp(np.mean(np.log(per_level)))) if per_level else None
        )
    result["loadavg_at_end"] = os.getloadavg()
    plot(out / "load.png", result)
    result["plot"] = str(out / "load.png")
    print(table(result))
    return result
