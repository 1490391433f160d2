"""Markdown table of several `editserve eval` runs: python -m evaluation.summarize RUN_DIR [RUN_DIR ...]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from evaluation.metrics import METRIC_KEYS, fmt

# Every metric the harness reports, with the run's size and time (metrics.METRIC_KEYS).
COLUMNS = METRIC_KEYS


def table(dirs: list[Path]) -> str:
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        lines.append(f"| {d.name} | " + " | ".join(fmt(m.get(c), 3) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(table([Path(a) for a in argv if (Path(a) / "metrics.json").exists()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
