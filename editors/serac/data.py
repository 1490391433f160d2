"""Readers for the train/val files (../shared/data) used to fit, train and measure SERAC."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def data_root() -> Path:
    env = os.environ.get("EDITSERVE_EVAL_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if cand.exists():
            return cand
    return Path("../shared/data")


@dataclass
class Record:
    prompt: str
    target: str
    paraphrase: str
    loc: str  # out-of-scope probe (NQ question for zsRE, neighbourhood prompt for CounterFact)
    loc_ans: str


def zsre(start: int = 0, stop: int | None = None, name: str = "zsre_mend_train-1k.json") -> list[Record]:
    rows = json.loads((data_root() / "zsre" / name).read_text())[start:stop]
    return [Record(r["src"], r["alt"], r["rephrase"], r["loc"], r["loc_ans"]) for r in rows]


def counterfact(split: str = "train", start: int = 0, stop: int | None = None) -> list[Record]:
    rows = json.loads((data_root() / "counterfact" / f"counterfact-{split}.json").read_text())[start:stop]
    return [Record(r["prompt"], r["target_new"], r["rephrase_prompt"], r["locality_prompt"],
                   r["locality_ground_truth"]) for r in rows]


def nq_questions(start: int = 0, stop: int | None = None) -> list[str]:
    lines = (data_root() / "nq" / "NQ-open.dev.jsonl").read_text().splitlines()[start:stop]
    return [json.loads(line)["question"] for line in lines]
