"""`editserve eval`: edit a backbone with N facts from a dataset, one after another, then measure.

    editserve eval --dataset zsre --n 1037 --method ireva --out runs/zsre-ireva
    editserve eval --dataset zsre --method ireva --sweep edits --out runs/sweep-edits
    editserve eval --dataset zsre --n 200 --method ireva --sweep layer --out runs/sweep-layer

All N edits are inserted through the editor classes the server uses, then evaluated with all of them
active (evaluation/pipeline.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from editors import registry
from evaluation import datasets, metrics, options, pipeline, report

# the served methods, the unedited model, and two references the server does not offer: in-context
# editing (the edit stated before the query) and fine-tuning
METHODS = ("none", *registry.METHODS, "ike", "ft")
METRIC_KEYS = metrics.METRIC_KEYS
OUTPUTS = """
Writes DIR/metrics.json (exactly those keys), DIR/report.md, DIR/records.jsonl (per-record detail),
and prints the metrics as the last line of stdout. Unedited predictions are cached on disk
(<cache dir>/eval) keyed by model, sequences, batch size and thread count; --no-cache skips it.
"""


def _sweep_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--sweep",
        choices=("edits", "layer"),
        default=None,
        help="edits: N in 10, 100, 1000 and the whole file; layer: every --layer-step-th layer",
    )
    ap.add_argument("--points", default=None, help="sweep points, comma-separated (N values or layers)")
    ap.add_argument("--layer-step", type=int, default=3)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="sweeps: keep a point whose directory holds metrics.json made by the same command (argv.json)",
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="editserve eval",
        description=__doc__ + "\n" + metrics.__doc__ + OUTPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--dataset", choices=datasets.DATASETS, default="zsre")
    ap.add_argument("--n", type=int, default=None, help="first N records of the file (default: all)")
    ap.add_argument("--method", choices=METHODS, default="ireva")
    ap.add_argument("--retrofit", action="store_true", help="iReVa with retrofit (insert(..., retrofit=True))")
    ap.add_argument(
        "--split",
        choices=datasets.SPLITS,
        default="acceptance",
        help="acceptance files are for reporting; tune on dev (the train files)",
    )
    ap.add_argument("--layer", type=int, default=None, help="the method's or FT's layer (negative: from the top)")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the method's config (its section of the settings; FT: epochs, lr, "
        "train_batch, seed); repeatable",
    )
    ap.add_argument("--out", required=True, help="output directory")
    _sweep_options(ap)
    ap.add_argument(
        "--eval-sample",
        type=int,
        default=None,
        help="insert all N edits but measure on a random sample of this many of them (large N)",
    )
    ap.add_argument(
        "--withdraw-sample",
        type=int,
        default=None,
        help="measure rs/con on a random sample of this many edits (default: every edit)",
    )
    ap.add_argument("--data-dir", default=None, help="default $EDITSERVE_EVAL_DATA or ../shared/data")
    options.add_model(ap)
    options.add_cache_dir(ap, "converted models, SERAC's shared adapter, the scope model, the eval cache")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-cache", action="store_true", help="do not cache unedited predictions on disk")
    ap.add_argument("--seed", type=int, default=0)
    args = options.resolve(ap.parse_args(argv))
    if args.n is not None and args.n < 1:
        ap.error("--n must be at least 1")
    if args.split not in datasets.splits(args.dataset):
        ap.error(f"--dataset {args.dataset} has no {args.split} split: only {', '.join(datasets.splits(args.dataset))}")
    if args.retrofit and args.method not in registry.METHODS:
        ap.error(f"--retrofit applies to an editing method ({', '.join(registry.METHODS)})")
    try:
        args.overrides = dict(item.split("=", 1) for item in args.config)
    except ValueError:
        ap.error("--config takes KEY=VALUE")
    return args


def evaluate(args, backbone, started: float | None = None) -> dict:
    """One run: measure, write args.out, return the metrics."""
    results = pipeline.run(args, backbone, started)
    report.write(Path(args.out), results)
    return results.metrics


def sweep(args, backbone) -> dict:
    """Every point of --sweep, each a run of its own in DIR/<n|layer><point>, then the sweep's files."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_name, points = pipeline.sweep_points(args, backbone)
    rows = []
    for p in tqdm(points, desc=f"sweep {args.sweep}"):
        sub = pipeline.point_args(args, x_name, p, out)
        done, made_by = Path(sub.out) / "metrics.json", Path(sub.out) / "argv.json"
        argv = report.command_line(sub)
        if args.resume and done.exists() and made_by.exists() and json.loads(made_by.read_text()) == argv:
            m = json.loads(done.read_text())  # the same point, finished before
        else:
            m = evaluate(sub, backbone)
            made_by.write_text(json.dumps(argv) + "\n")
        rows.append({x_name: p, **m})
        report.write_sweep_json(out, args, rows)
    report.write_sweep(out, args, x_name, rows)
    return report.sweep_summary(args, rows)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = pipeline.load_backbone_for(args)
    result = sweep(args, backbone) if args.sweep else evaluate(args, backbone, started)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
