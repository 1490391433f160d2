"""`editserve bench`: what edits cost, measured side by side on this machine.

    editserve bench --n 10000 --out runs/bench

Writes DIR/bench.json and prints it as the last line of stdout:

  insert_over_forward            median seconds of one iReVa insert / median seconds of one forward pass
                                 of the same prompt; the two are measured alternately, prompt by prompt,
                                 with the N edits active
  retrofit_insert_over_forward   the same with insert(..., retrofit=True); null while IrevaEditor has no
                                 retrofit
  gen_speed_ratio                greedy tokens/s with the N edits active / with the adaptor off (what a
                                 server with no edits runs), same prompts, interleaved prompt by prompt
  restart_extra_s                start-to-ready of `editserve serve` (process start until GET /health
                                 answers) on a data dir holding N iReVa edits minus on one holding none,
                                 alternating, medians (fallback without app/storage: editor.load of N
                                 safetensors blobs)
  bytes_per_neuron               memory of one iReVa neuron (key + value + mask entry); the on-disk size
                                 per neuron of the stored blobs is in details
  serac_query_overhead_ms        median ms SERAC's scope classifier adds to every query (embedding +
                                 nearest of N edit embeddings); null if editors.serac is missing

With N above --real (default 200), `--real` edits are built by insert from real dev prompts and the
rest are synthesised with load(): random unit keys and values in the real values' directions and
norms, with the real edits' neuron counts. Synthetic keys fire on nothing: they cost what real ones
cost in the max-pooled score, not in what they change. bench.json says how many were synthetic.
Timings move with machine load; they are printed, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evaluation import datasets

KEYS = ("insert_over_forward", "retrofit_insert_over_forward", "gen_speed_ratio", "restart_extra_s",
        "bytes_per_neuron", "serac_query_overhead_ms")
REPO = Path(__file__).resolve().parents[1]


def parse(argv):
    ap = argparse.ArgumentParser(prog="editserve bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="edits active during the measurements")
    ap.add_argument("--out", required=True)
    ap.add_argument("--real", type=int, default=200, help="edits built by a real insert; the rest synthesised")
    ap.add_argument("--samples", type=int, default=30, help="insert/forward pairs")
    ap.add_argument("--gen-prompts", type=int, default=20)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--restart-reps", type=int, default=3, help="server starts per data dir")
    ap.add_argument("--serac-queries", type=int, default=50)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: restart, serac, gen, retrofit")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default="~/.cache/editserve")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def _median(xs):
    return statistics.median(xs) if xs else None


def _prompts(root, count: int) -> list[tuple[str, str]]:
    """(prompt, target) pairs from the dev files: zsRE train, then CounterFact train."""
    pairs = [(r.prompt, r.target) for r in datasets.load("zsre", "dev", None, root)]
    if len(pairs) < count:
        pairs += [(r.prompt, r.target) for r in datasets.load("counterfact", "dev", None, root)]
    while len(pairs) < count:  # beyond the dev files: numbered variants
        pairs += [(f"{p} (variant {len(pairs)})", t) for p, t in pairs[: count - len(pairs)]]
    return pairs[:count]


@torch.no_grad()
def _forward_seconds(backbone, ids: list[int]) -> float:
    x = torch.tensor([ids], device=backbone.device)
    t = time.perf_counter()
    backbone.model(input_ids=x, use_cache=False)
    return time.perf_counter() - t


def fill_ireva(editor, pairs, n: int, real: int, seed: int) -> dict:
    """Bring the editor to n edits: `real` by insert, the rest synthesised with load()."""
    real = min(real, n)
    counts, norms, dirs = [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(real), desc="bench: real inserts", leave=False):
        p, t = pairs[i]
        try:
            editor.insert(f"r{i}", p, t)
        except ValueError:
            continue
        tensors = editor.tensors(f"r{i}")
        counts.append(tensors["keys"].shape[0])
        norms += tensors["values"].norm(dim=-1).tolist()
        dirs.append(tensors["values"] / tensors["values"].norm(dim=-1, keepdim=True).clamp_min(1e-12))
    insert_mean = (time.perf_counter() - t0) / max(real, 1)
    dirs_all = torch.cat(dirs) if dirs else torch.zeros(0)
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    hidden = editor.adaptor.keys.shape[1]
    synthetic = 0
    for i in tqdm(range(real, n), desc="bench: synthetic loads", leave=False):
        m = rng.choice(counts) if counts else 3
        keys = torch.randn(m, hidden, generator=g)
        keys = keys / keys.norm(dim=-1, keepdim=True)
        pick = torch.randint(len(dirs_all), (m,), generator=g)
        scale = torch.tensor([rng.choice(norms) for _ in range(m)])
        editor.load(f"s{i}", {"keys": keys, "values": dirs_all[pick] * scale[:, None]})
        synthetic += 1
    return {"real_edits": len(counts), "synthetic_edits": synthetic, "neurons": int(editor.adaptor.live),
            "neurons_per_real_edit": sum(counts) / max(len(counts), 1), "seconds_per_real_insert": insert_mean}


def insert_vs_forward(backbone, editor, pairs, samples: int, retrofit: bool = False) -> dict:
    from editors.backbone import encode_prompt

    ins, fwd = [], []
    kwargs = {"retrofit": True} if retrofit else {}
    for i in tqdm(range(samples), desc="bench: insert vs forward" + (" (retrofit)" if retrofit else ""), leave=False):
        p, t = pairs[i]
        ids = encode_prompt(backbone.tokenizer, p)
        edit_id = f"bench{'R' if retrofit else ''}{i}"
        order = ("f", "i") if i % 2 == 0 else ("i", "f")
        for what in order:
            if what == "f":
                fwd.append(_forward_seconds(backbone, ids))
            else:
                t0 = time.perf_counter()
                editor.insert(edit_id, p, t, **kwargs)
                ins.append(time.perf_counter() - t0)
        editor.discard(edit_id)  # keep the edit count at N
    ratio = _median(ins) / _median(fwd)
    return {"ratio": ratio, "insert_median_s": _median(ins), "forward_median_s": _median(fwd),
            "paired_ratio_median": _median([a / b for a, b in zip(ins, fwd)]), "samples": samples}


def generation_speed(backbone, editor, prompts: list[str], tokens: int) -> dict:
    from editors.generation import generate

    times = {True: 0.0, False: 0.0}
    counts = {True: 0, False: 0}
    pair_ratios = []
    fired = 0
    for i, p in enumerate(tqdm(prompts, desc="bench: generation on/off", leave=False)):
        rate = {}
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            editor.adaptor.enabled = on
            t0 = time.perf_counter()
            out = generate(backbone, editor, p, max_new_tokens=tokens)
            dt = time.perf_counter() - t0
            times[on] += dt
            counts[on] += len(out.token_ids)
            rate[on] = len(out.token_ids) / dt if dt > 0 else 0.0
            if on:
                fired += any(owner is not None for _, owner in out.tokens)
        editor.adaptor.enabled = True
        if rate[False] > 0:
            pair_ratios.append(rate[True] / rate[False])
    on_rate, off_rate = counts[True] / times[True], counts[False] / times[False]
    return {"ratio": on_rate / off_rate, "tokens_per_s_with_edits": on_rate, "tokens_per_s_without": off_rate,
            "paired_ratio_median": _median(pair_ratios), "prompts": len(prompts),
            "prompts_where_an_edit_fired": fired}


# -- restart ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_to_ready(data_dir: Path, threads: int | None, timeout: float = 300.0) -> tuple[float, int]:
    port = _free_port()
    env = dict(os.environ, EDITSERVE_DATA_DIR=str(data_dir), EDITSERVE_PORT=str(port), EDITSERVE_HOST="127.0.0.1",
               EDITSERVE_METHODS="ireva", EDITSERVE_LOG_LEVEL="warning",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["EDITSERVE_TORCH_THREADS"] = str(threads)
    url = f"http://127.0.0.1:{port}/health"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=str(data_dir.parent), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    body = json.loads(resp.read())
                    return time.perf_counter() - t0, int(body.get("edits_active", -1))
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"server not ready after {timeout} s")
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _build_data_dirs(backbone, editor, workdir: Path, threads) -> tuple[Path, Path]:
    """Two server data dirs with the same iReVa editor state: one empty, one holding the editor's edits."""
    from app.core.config import Settings
    from editors.registry import METHODS
    from storage import migrate
    from storage.repository import Repository, database_url

    dirs = []
    for name, with_edits in (("empty", False), ("full", True)):
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(database_url(d))
        repo = Repository(d)
        settings = Settings(data_dir=d)
        method = METHODS["ireva"]
        repo.save_editor_state("ireva", method.fingerprint(backbone, settings), method.state(editor))
        if with_edits:
            for edit_id in tqdm(list(editor.slots), desc="bench: writing the data dir", leave=False):
                tensors = editor.tensors(edit_id)
                repo.create(edit_id=f"{edit_id}-{os.urandom(4).hex()}", method="ireva",
                            prompt=f"bench prompt {edit_id}", target="x", retrofit=False,
                            neurons=tensors["keys"].shape[0], tensors=tensors)
        repo.close()
        dirs.append(d)
    return dirs[0], dirs[1]


def restart_cost(backbone, editor, reps: int, threads) -> dict:
    work = Path(tempfile.mkdtemp(prefix="editserve-bench-"))
    try:
        try:
            empty, full = _build_data_dirs(backbone, editor, work, threads)
        except ImportError as exc:
            return _load_cost_fallback(editor, work, f"app/storage not importable ({exc})")
        times = {"empty": [], "full": []}
        active = None
        for r in tqdm(range(reps), desc="bench: server restarts", leave=False):
            for which in (("empty", "full") if r % 2 == 0 else ("full", "empty")):
                seconds, edits = _start_to_ready(empty if which == "empty" else full, threads)
                times[which].append(seconds)
                if which == "full":
                    active = edits
        disk = sum(p.stat().st_size for p in (full / "blobs").iterdir() if not p.name.startswith("state-"))
        return {"extra_s": _median(times["full"]) - _median(times["empty"]),
                "ready_s_empty": times["empty"], "ready_s_with_edits": times["full"], "edits_active": active,
                "how": "editserve serve subprocess, process start to first 200 from GET /health",
                "disk_bytes_per_neuron": disk / max(int(editor.adaptor.live), 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_cost_fallback(editor, work: Path, why: str) -> dict:
    """Without the server's storage: time editor.load of every persisted blob into a fresh editor."""
    from safetensors.torch import load_file, save_file

    from editors.ireva.model import IrevaEditor

    blobs = work / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    ids = list(editor.slots)
    for edit_id in ids:
        save_file(editor.tensors(edit_id), str(blobs / f"{edit_id}.safetensors"))
    fresh = IrevaEditor(editor.backbone, editor.config, centre=editor.adaptor.centre)
    t0 = time.perf_counter()
    for edit_id in ids:
        fresh.load(edit_id, load_file(str(blobs / f"{edit_id}.safetensors")))
    seconds = time.perf_counter() - t0
    fresh.close()
    disk = sum(p.stat().st_size for p in blobs.iterdir())
    return {"extra_s": seconds, "how": f"fallback, {why}: editor.load of {len(ids)} safetensors blobs",
            "disk_bytes_per_neuron": disk / max(int(editor.adaptor.live), 1)}


# -- SERAC ------------------------------------------------------------------------------------------------
def serac_overhead(backbone, pairs, n: int, queries: list[str], seed: int) -> dict:
    import importlib

    from editors.backbone import encode_prompt

    try:
        serac = importlib.import_module("editors.serac")
    except Exception as exc:  # noqa: BLE001
        return {"ms": None, "note": f"editors.serac not importable: {type(exc).__name__}: {exc}"}
    editor = serac.SeracEditor(backbone, serac.SeracConfig())
    prompts = [p for p, _ in pairs[:n]]
    t0 = time.perf_counter()
    embeddings = editor.embedder(prompts)
    embed_s = time.perf_counter() - t0
    for i, ((p, t), e) in enumerate(zip(pairs[:n], embeddings)):
        editor.load(f"q{i}", {"embedding": e, "prompt": torch.tensor(list(p.encode()), dtype=torch.uint8),
                              "target": torch.tensor(list(t.encode()), dtype=torch.uint8)})
    route_ms, routed, cf_ratio = [], 0, []
    for q in tqdm(queries, desc="bench: serac routing", leave=False):
        t = time.perf_counter()
        edit = editor.route(q)
        route_ms.append(1000 * (time.perf_counter() - t))
        if edit is not None:
            routed += 1
            plain = _forward_seconds(backbone, encode_prompt(backbone.tokenizer, q))
            with (editor.counterfactual() if hasattr(editor, "counterfactual") else contextlib.nullcontext()):
                cf = _forward_seconds(backbone, encode_prompt(backbone.tokenizer, editor.counterfactual_prompt(edit, q)))
            cf_ratio.append(cf / plain)
    return {"ms": _median(route_ms), "edits": len(editor), "queries": len(queries), "routed": routed,
            "counterfactual_forward_over_plain_median": _median(cf_ratio),
            "bulk_embedding_s_per_edit": embed_s / max(n, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from editors.backbone import load_backbone
    from editors.ireva.model import IrevaEditor
    import inspect

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = datasets.data_root(args.data_dir)
    backbone = load_backbone(cache_dir=args.cache_dir)
    pairs = _prompts(root, max(args.n, args.real) + args.samples * 2 + args.gen_prompts)
    editor = IrevaEditor(backbone)
    notes = []
    details = {"n": args.n, "torch_threads": torch.get_num_threads(), "machine_cpus": os.cpu_count()}

    details["fill"] = fill_ireva(editor, pairs, args.n, args.real, args.seed)
    if details["fill"]["synthetic_edits"]:
        notes.append(f"{details['fill']['synthetic_edits']} of {args.n} edits are synthetic (random unit keys, "
                     f"real value directions/norms, loaded with load()); {details['fill']['real_edits']} are real inserts")
    spare = pairs[max(args.n, args.real):]
    details["insert"] = insert_vs_forward(backbone, editor, spare, args.samples)
    result = {"insert_over_forward": details["insert"]["ratio"]}

    if "retrofit" not in inspect.signature(IrevaEditor.insert).parameters:
        result["retrofit_insert_over_forward"] = None
        notes.append("retrofit_insert_over_forward is null: IrevaEditor.insert has no retrofit parameter yet")
    elif "retrofit" in args.skip:
        result["retrofit_insert_over_forward"] = None
        notes.append("retrofit skipped (--skip)")
    else:
        details["retrofit"] = insert_vs_forward(backbone, editor, spare[args.samples:], args.samples, retrofit=True)
        result["retrofit_insert_over_forward"] = details["retrofit"]["ratio"]

    if "gen" in args.skip:
        result["gen_speed_ratio"] = None
        notes.append("generation speed skipped (--skip)")
    else:
        real_prompts = [p for p, _ in pairs[: min(args.n, args.real)]]
        nq = [q.prompt for q in datasets.nq("dev", root)]
        half = args.gen_prompts // 2
        prompts = real_prompts[:half] + nq[: args.gen_prompts - min(half, len(real_prompts))]
        details["generation"] = generation_speed(backbone, editor, prompts, args.gen_tokens)
        result["gen_speed_ratio"] = details["generation"]["ratio"]

    if "restart" in args.skip:
        result["restart_extra_s"] = None
        notes.append("restart skipped (--skip)")
    else:
        details["restart"] = restart_cost(backbone, editor, args.restart_reps, args.threads)
        result["restart_extra_s"] = details["restart"]["extra_s"]
        notes.append(f"restart_extra_s: {details['restart']['how']}")

    a = editor.adaptor
    per = a.keys.element_size() * a.keys.shape[1] + a.values.element_size() * a.values.shape[1] + a.mask_bias.element_size()
    result["bytes_per_neuron"] = per
    details["memory_bytes_live_neurons"] = per * int(a.live)
    details["memory_bytes_allocated"] = per * a.keys.shape[0]  # the adaptor's buffers grow by doubling

    if "serac" in args.skip:
        result["serac_query_overhead_ms"] = None
        notes.append("serac skipped (--skip)")
    else:
        nq = [q.prompt for q in datasets.nq("dev", root)]
        half = args.serac_queries // 2
        queries = [p for p, _ in pairs[:half]] + nq[: args.serac_queries - half]
        details["serac"] = serac_overhead(backbone, pairs, args.n, queries, args.seed)
        result["serac_query_overhead_ms"] = details["serac"]["ms"]
        if details["serac"]["ms"] is None:
            notes.append(details["serac"]["note"])
    editor.close()

    bench = {k: result[k] for k in KEYS}
    bench["n_edits"] = args.n
    bench["notes"] = notes
    bench["details"] = details
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(json.dumps(bench))
    return 0
