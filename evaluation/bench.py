"""`editserve bench`: what edits cost, measured side by side on this machine.

    editserve bench --n 10000 --out runs/bench

Writes DIR/bench.json and prints it as the last line of stdout:

  insert_over_forward            median seconds of one iReVa insert as the server makes it (the editor's
                                 neurons and the scope index's row) / median seconds of one forward pass
                                 of the same prompt; measured alternately, prompt by prompt, with the N
                                 edits active
  retrofit_insert_over_forward   the same with retrofit=True
  gen_speed_ratio                greedy tokens/s with the N edits active (the scope decision included) /
                                 with the edits off (what a server with no edits runs), same prompts,
                                 interleaved prompt by prompt
  restart_extra_s                start-to-ready of `editserve serve` (process start until GET /health
                                 answers) on a data dir holding N iReVa edits minus on one holding none,
                                 alternating, medians
  bytes_per_neuron               memory of one iReVa neuron: a row of every per-slot buffer the adaptor
                                 holds (element size x row width, read off the buffers); the on-disk size
                                 per neuron of the stored blobs is in details
  scope_decision_ms              median ms the scope decision (editors/scope: which edit, if any, a query
                                 is about) adds to a query with the N edits active, one query at a time
  scope_decision_over_forward    that decision / one forward pass of the backbone on the same query

All answers go through editors/edited.py's EditedModel, as in the server. With N above --real (default
200), `--real` edits are built by insert from real dev prompts and the rest are synthesised and loaded
as a start loads them: real dev prompts and targets (so the scope index holds real prompts and each edit
has its target's neuron count), random unit keys, values in the real values' directions and norms.
bench.json says how many were synthetic. Timings move with machine load; they are printed, never asserted.

`editserve bench serving ...` measures a real server process from its clients instead (streaming's first
token; evaluation/serving_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editors.backbone import encode_prompt, encode_target
from editors.edited import EditedModel, Query, Restore
from evaluation import datasets, options
from evaluation.server import Server

# This bench measures the cost of iReVa's neurons (how they store, load and answer at scale).
METHOD = "ireva"

KEYS = (
    "insert_over_forward",
    "retrofit_insert_over_forward",
    "gen_speed_ratio",
    "restart_extra_s",
    "bytes_per_neuron",
    "scope_decision_ms",
    "scope_decision_over_forward",
)
PARTS = ("restart", "scope", "gen", "retrofit")


def parse(argv):
    ap = argparse.ArgumentParser(
        prog="editserve bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, required=True, help="edits active during the measurements")
    ap.add_argument("--out", required=True)
    ap.add_argument("--real", type=int, default=200, help="edits built by a real insert; the rest synthesised")
    ap.add_argument("--samples", type=int, default=30, help="insert/forward pairs")
    ap.add_argument("--gen-prompts", type=int, default=20)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--restart-reps", type=int, default=3, help="server starts per data dir")
    ap.add_argument("--scope-queries", type=int, default=50, help="queries whose scope decision is timed")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    ap.add_argument("--data-dir", default=None, help="default $EDITSERVE_EVAL_DATA or ../shared/data")
    options.add_cache_dir(ap)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = options.resolve(ap.parse_args(argv))
    if args.n < 1:
        ap.error("--n must be at least 1")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(PARTS):
        ap.error(f"--skip: unknown parts {sorted(args.skip - set(PARTS))}; parts: {', '.join(PARTS)}")
    return args


def _median(xs):
    return statistics.median(xs) if xs else None


def _prompts(root, count: int) -> list[tuple[str, str]]:
    """`count` (prompt, target) pairs: the dev files' edits (datasets.dev_edit_pairs), then numbered
    variants of them."""
    pairs = datasets.dev_edit_pairs(root)
    while len(pairs) < count:  # beyond the dev files: numbered variants
        pairs += [(f"{p} (variant {len(pairs)})", t) for p, t in pairs[: count - len(pairs)]]
    return pairs[:count]


@torch.no_grad()
def _forward_seconds(backbone, ids: list[int]) -> float:
    x = torch.tensor([ids], device=backbone.device)
    t = time.perf_counter()
    backbone.model(input_ids=x, use_cache=False)
    return time.perf_counter() - t


def build_model(backbone, cache_dir) -> EditedModel:
    """iReVa and the scope model as the server builds them (settings from EDITSERVE_* variables)."""
    from app.core.config import Settings
    from app.services.startup import build_model as build_served

    return build_served(Settings(_env_file=None, cache_dir=cache_dir), [METHOD], backbone)


def fill(model: EditedModel, pairs, n: int, real: int, seed: int) -> tuple[dict, dict[str, tuple[str, str]]]:
    """Bring the model to n edits: `real` by insert, the rest synthesised and loaded at once."""
    editor, tok = model.editor(METHOD), model.backbone.tokenizer
    real = min(real, n)
    edits: dict[str, tuple[str, str]] = {}
    counts, norms, dirs = [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(real), desc="bench: real inserts", leave=False):
        p, t = pairs[i]
        try:
            tensors = model.insert(METHOD, f"r{i}", p, t)
        except ValueError:
            continue
        edits[f"r{i}"] = (p, t)
        counts.append(tensors["keys"].shape[0])
        norms += tensors["values"].norm(dim=-1).tolist()
        dirs.append(tensors["values"] / tensors["values"].norm(dim=-1, keepdim=True).clamp_min(1e-12))
    insert_mean = (time.perf_counter() - t0) / max(real, 1)
    dirs_all = torch.cat(dirs) if dirs else torch.zeros(0)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    hidden = editor.adaptor.keys.shape[1]
    synthetic = []
    for i in tqdm(range(real, n), desc="bench: synthetic edits", leave=False):
        p, t = pairs[i]
        m = len(encode_target(tok, p, t))
        if not m or not len(dirs_all):
            continue
        keys = torch.nn.functional.normalize(torch.randn(m, hidden, generator=g), dim=-1)
        pick = torch.randint(len(dirs_all), (m,), generator=g)
        scale = torch.tensor([rng.choice(norms) for _ in range(m)])
        synthetic.append((f"s{i}", METHOD, p, t, {"keys": keys, "values": dirs_all[pick] * scale[:, None]}, None))
    t0 = time.perf_counter()
    errors, _ = model.load(synthetic, [])
    load_seconds = time.perf_counter() - t0
    edits.update({edit_id: (p, t) for edit_id, _, p, t, _, _ in synthetic if edit_id not in errors})
    info = {
        "real_edits": len(counts),
        "synthetic_edits": len(synthetic) - len(errors),
        "neurons": editor.adaptor.live_count,
        "neurons_per_real_edit": sum(counts) / max(len(counts), 1),
        "seconds_per_real_insert": insert_mean,
        "seconds_to_load_synthetic": load_seconds,
    }
    return info, edits


def insert_vs_forward(model: EditedModel, pairs, samples: int, retrofit: bool = False) -> dict:
    backbone = model.backbone
    ins, fwd = [], []
    for i in tqdm(range(samples), desc="bench: insert vs forward" + (" (retrofit)" if retrofit else ""), leave=False):
        p, t = pairs[i]
        ids = encode_prompt(backbone.tokenizer, p)
        edit_id = f"bench{'R' if retrofit else ''}{i}"
        for what in ("f", "i") if i % 2 == 0 else ("i", "f"):
            if what == "f":
                fwd.append(_forward_seconds(backbone, ids))
            else:
                t0 = time.perf_counter()
                model.insert(METHOD, edit_id, p, t, retrofit)
                ins.append(time.perf_counter() - t0)
        model.restore(Restore(edit_id, METHOD, p, t, None))  # undo the insert: the edit count stays N
    return {
        "ratio": _median(ins) / _median(fwd),
        "insert_median_s": _median(ins),
        "forward_median_s": _median(fwd),
        "paired_ratio_median": _median([a / b for a, b in zip(ins, fwd)]),
        "samples": samples,
    }


def generation_speed(model: EditedModel, prompts: list[str], tokens: int) -> dict:
    times = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    pair_ratios = []
    fired = 0
    for i, p in enumerate(tqdm(prompts, desc="bench: generation with/without edits", leave=False)):
        rate = {}
        for on in (True, False) if i % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            out = model.generate(Query.prompt(p), max_new_tokens=tokens, edits=on)
            dt = time.perf_counter() - t0
            times[on] += dt
            counts[on] += len(out.token_ids)
            rate[on] = len(out.token_ids) / dt if dt > 0 else 0.0
            if on:
                fired += any(owner is not None for _, owner in out.tokens)
        if rate[False] > 0:
            pair_ratios.append(rate[True] / rate[False])
    on_rate, off_rate = counts[True] / times[True], counts[False] / times[False]
    return {
        "ratio": on_rate / off_rate,
        "tokens_per_s_with_edits": on_rate,
        "tokens_per_s_without": off_rate,
        "paired_ratio_median": _median(pair_ratios),
        "prompts": len(prompts),
        "prompts_where_an_edit_fired": fired,
    }


def neuron_bytes(adaptor: torch.nn.Module) -> tuple[int, dict[str, int]]:
    """Bytes one neuron takes in the adaptor: one row of every tensor it keeps per slot (first dimension
    = its slot capacity, as keys have), registered buffer or plain attribute; with the bytes per buffer.
    (A per-layer vector such as the centre would count too if the capacity equalled the hidden width.)"""
    capacity = adaptor.keys.shape[0]
    tensors = {name: t for name, t in vars(adaptor).items() if isinstance(t, torch.Tensor)}
    tensors.update(dict(adaptor.named_buffers(recurse=False)))
    rows = {
        name: (t.numel() // capacity) * t.element_size()
        for name, t in tensors.items()
        if t.dim() >= 1 and t.shape[0] == capacity
    }
    return sum(rows.values()), rows


# -- restart ----------------------------------------------------------------------------------------------
def _data_dirs(model: EditedModel, edits: dict[str, tuple[str, str]], workdir: Path, cache_dir) -> tuple[Path, Path]:
    """Two server data dirs with the same iReVa editor state: one empty, one holding the model's edits."""
    from app.core.config import Settings
    from editors.registry import METHODS
    from storage import migrate
    from storage.repository import Repository, database_url

    editor = model.editor(METHOD)
    dirs = []
    for name, with_edits in (("empty", False), ("full", True)):
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(database_url(d))
        repo = Repository(d)
        settings = Settings(_env_file=None, data_dir=d, cache_dir=cache_dir)
        repo.save_editor_state(METHOD, METHODS[METHOD].fingerprint(model.backbone, settings), editor.state())
        if with_edits:
            for edit_id, (prompt, target) in tqdm(edits.items(), desc="bench: writing the data dir", leave=False):
                tensors = editor.tensors(edit_id)
                repo.create(
                    edit_id=edit_id,
                    method=METHOD,
                    prompt=prompt,
                    target=target,
                    retrofit=False,
                    neurons=tensors["keys"].shape[0],
                    tensors=tensors,
                )
        repo.close()
        dirs.append(d)
    return dirs[0], dirs[1]


def restart_cost(model: EditedModel, edits, reps: int, threads, cache_dir) -> dict:
    work = Path(tempfile.mkdtemp(prefix="editserve-bench-"))
    try:
        empty, full = _data_dirs(model, edits, work, cache_dir)
        env = {
            "EDITSERVE_METHODS": METHOD,
            "EDITSERVE_LOG_LEVEL": "warning",
            "EDITSERVE_CACHE_DIR": str(Path(cache_dir).expanduser()),
        }
        if threads:
            env["EDITSERVE_TORCH_THREADS"] = str(threads)
        times = {"empty": [], "full": []}
        active = None
        for r in tqdm(range(reps), desc="bench: server restarts", leave=False):
            for which in ("empty", "full") if r % 2 == 0 else ("full", "empty"):
                with Server(empty if which == "empty" else full, env, ready_timeout=300.0) as server:
                    times[which].append(server.ready_seconds)
                    if which == "full":
                        active = int(server.health.get("edits_active", -1))
        disk = sum(p.stat().st_size for p in (full / "blobs").iterdir() if not p.name.startswith("state-"))
        return {
            "extra_s": _median(times["full"]) - _median(times["empty"]),
            "ready_s_empty": times["empty"],
            "ready_s_with_edits": times["full"],
            "edits_active": active,
            "how": "editserve serve subprocess, process start to first 200 from GET /health",
            "disk_bytes_per_neuron": disk / max(model.editor(METHOD).adaptor.live_count, 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- scope decision ---------------------------------------------------------------------------------------
def scope_cost(model: EditedModel, queries: list[str]) -> dict:
    """The scope decision for one query at a time (as a server meets them), beside one forward pass of
    the backbone on the same query, interleaved."""
    backbone, scope = model.backbone, model.scope
    decide, embed, fwd, found = [], [], [], 0
    for i, q in enumerate(tqdm(queries, desc="bench: scope decisions", leave=False)):
        ids = encode_prompt(backbone.tokenizer, q)
        for what in ("d", "f") if i % 2 == 0 else ("f", "d"):
            if what == "f":
                fwd.append(_forward_seconds(backbone, ids))
            else:
                t = time.perf_counter()
                decision = model.decide([Query.prompt(q)])[0]
                decide.append(time.perf_counter() - t)
                found += decision is not None
        t = time.perf_counter()
        scope.model.embed([q])
        embed.append(time.perf_counter() - t)
    return {
        "ms": 1000 * _median(decide),
        "over_forward": _median(decide) / _median(fwd),
        "paired_ratio_median": _median([d / f for d, f in zip(decide, fwd)]),
        "embed_ms": 1000 * _median(embed),
        "forward_ms": 1000 * _median(fwd),
        "edits": len(scope),
        "queries": len(queries),
        "in_some_scope": found,
        "trained": scope.model.trained,
    }


def _memory_and_scope(args, model, pairs, nq, result: dict, details: dict, notes: list) -> None:
    """The neurons' memory, and what a scope decision costs against a forward pass."""
    adaptor = model.editor(METHOD).adaptor
    per, rows = neuron_bytes(adaptor)
    result["bytes_per_neuron"] = per
    details["memory_bytes_per_neuron_by_buffer"] = rows
    details["memory_bytes_live_neurons"] = per * adaptor.live_count
    details["memory_bytes_allocated"] = per * adaptor.keys.shape[0]  # the buffers grow by doubling
    result["scope_decision_ms"] = result["scope_decision_over_forward"] = None
    if "scope" in args.skip:
        notes.append("scope decision skipped (--skip)")
    else:
        half = args.scope_queries // 2
        details["scope"] = scope_cost(model, [p for p, _ in pairs[:half]] + nq[: args.scope_queries - half])
        result["scope_decision_ms"] = details["scope"]["ms"]
        result["scope_decision_over_forward"] = details["scope"]["over_forward"]


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "serving":  # what a client of a running server sees: its own module
        from evaluation import serving_bench

        return serving_bench.main(argv[1:])
    if argv and argv[0] == "quant":  # a quantised backbone's answers against float32's
        from evaluation import quant_bench

        return quant_bench.main(argv[1:])
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from editors.backbone import load_backbone

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = datasets.data_root(args.data_dir)
    backbone = load_backbone(cache_dir=args.cache_dir)
    pairs = _prompts(root, max(args.n, args.real) + args.samples * 2 + args.gen_prompts)
    nq = [q.prompt for q in datasets.nq("dev", root)]
    model = build_model(backbone, args.cache_dir)
    editor = model.editor(METHOD)
    notes = []
    details = {"n": args.n, "torch_threads": torch.get_num_threads(), "machine_cpus": os.cpu_count()}

    details["fill"], edits = fill(model, pairs, args.n, args.real, args.seed)
    if details["fill"]["synthetic_edits"]:
        notes.append(
            f"{details['fill']['synthetic_edits']} of {args.n} edits are synthetic (real dev prompts and "
            "targets, random unit keys, real value directions/norms, loaded as a start loads them); "
            f"{details['fill']['real_edits']} are real inserts"
        )
    spare = pairs[max(args.n, args.real) :]
    details["insert"] = insert_vs_forward(model, spare, args.samples)
    result = {"insert_over_forward": details["insert"]["ratio"], "retrofit_insert_over_forward": None}
    if "retrofit" in args.skip:
        notes.append("retrofit skipped (--skip)")
    else:
        details["retrofit"] = insert_vs_forward(model, spare[args.samples :], args.samples, retrofit=True)
        result["retrofit_insert_over_forward"] = details["retrofit"]["ratio"]

    result["gen_speed_ratio"] = None
    if "gen" in args.skip:
        notes.append("generation speed skipped (--skip)")
    else:
        real_prompts = [p for p, _ in pairs[: min(args.n, args.real)]]
        half = args.gen_prompts // 2
        prompts = real_prompts[:half] + nq[: args.gen_prompts - min(half, len(real_prompts))]
        details["generation"] = generation_speed(model, prompts, args.gen_tokens)
        result["gen_speed_ratio"] = details["generation"]["ratio"]

    result["restart_extra_s"] = None
    if "restart" in args.skip:
        notes.append("restart skipped (--skip)")
    else:
        details["restart"] = restart_cost(model, edits, args.restart_reps, args.threads, args.cache_dir)
        result["restart_extra_s"] = details["restart"]["extra_s"]
        notes.append(f"restart_extra_s: {details['restart']['how']}")

    _memory_and_scope(args, model, pairs, nq, result, details, notes)
    editor.close()

    bench = {k: result[k] for k in KEYS}
    bench["n_edits"] = args.n
    bench["notes"] = notes
    bench["details"] = details
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(json.dumps(bench))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
