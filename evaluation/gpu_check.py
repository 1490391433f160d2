"""`make gpu-check`: what a machine with a CUDA device reports of the served model on it.

    python -m evaluation.gpu_check --out runs/gpu-check [--full]

On the GPU (EDITSERVE_DEVICE=cuda, the weights in bfloat16 or float16 as `auto` picks): the serving
bench's load part at 1 and 8 clients (tokens/s, p50/p95), then the acceptance figures of zsRE (300
edits) and, with --full, CounterFact (2,000 active, 100 judged). Each step is the same command a CPU
runs, so the figures compare. Without a CUDA device it says so and exits 0: nothing to check here.
Writes <out>/gpu-check.json and prints it as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def steps(out: Path, full: bool) -> list[tuple[str, list[str]]]:
    serving = ["bench", "serving", "--parts", "load", "--clients", "1,8", "--seconds", "10"]
    runs = [("serving", [*serving, "--out", str(out / "serving")])]
    runs.append(("zsre", ["eval", "--dataset", "zsre", "--n", "300", "--out", str(out / "zsre")]))
    if full:
        counterfact = ["eval", "--dataset", "counterfact", "--n", "2000", "--eval-sample", "100"]
        runs.append(("counterfact", [*counterfact, "--out", str(out / "counterfact")]))
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu-check")
    ap.add_argument("--full", action="store_true", help="also CounterFact's 2,000 edits (minutes more)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (run it where one is)")
        return 0
    from app.cli import main as editserve

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["EDITSERVE_DEVICE"] = "cuda"
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name, command in steps(out, args.full):
        t0 = time.perf_counter()
        code = editserve(command)
        result[name] = {"command": "editserve " + " ".join(command), "rc": code, "seconds": time.perf_counter() - t0}
        report = out / name / ("serving.json" if name == "serving" else "metrics.json")
        if report.exists():
            result[name]["result"] = json.loads(report.read_text())
    (out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if all(r["rc"] in (0, None) for k, r in result.items() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
