"""`editserve bench quant`: how far a quantised backbone's answers drift from the float32 ones.

    editserve bench quant --out runs/quant [--modes int4,int8] [--n 200] [--dataset counterfact]

On the harness's unedited probes (each record's out-of-scope prompt and its answer, acceptance split),
for every mode against float32 (EDITSERVE_QUANT=none) on the same weights:
  next_token   teacher-forced: share of the answer's positions whose greedy next token is float32's
               (what the harness's locality reads)
  continuation the prompt continued greedily for --tokens tokens: share of continuations identical,
               token for token, and share whose first 4 tokens are
  chat         the prompt asked as one chat turn, 40 tokens (the harness's unrelated_same probe):
               share of answers identical
Writes <out>/quant.json and prints it as the last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evaluation import datasets, options


def answers(backbone, records, tokens: int) -> dict[str, list]:
    from editors.backbone import encode_prompt, encode_target
    from editors.engine import next_tokens
    from editors.generation import generate_batch

    tok = backbone.tokenizer
    forced: list[int] = []
    for r in records:
        prompt = encode_prompt(tok, r.loc_prompt)
        target = encode_target(tok, r.loc_prompt, r.loc_answer)
        forced += next_tokens(backbone, [prompt + target[:i] for i in range(len(target))])
    raw = [encode_prompt(tok, r.loc_prompt) for r in records]
    turns = [[{"role": "user", "content": r.loc_prompt}] for r in records]
    chat = [encode_prompt(tok, tok.apply_chat_template(t, tokenize=False, add_generation_prompt=True)) for t in turns]

    def greedy(prompts: list[list[int]], budget: int) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(prompts), 8):
            batch = prompts[i : i + 8]
            out += [[s.token_id for s in row] for row in generate_batch(backbone, batch, [budget] * len(batch))]
        return out

    return {"next_token": forced, "continuation": greedy(raw, tokens), "chat": greedy(chat, 40)}


def compare(base: dict[str, list], other: dict[str, list]) -> dict:
    pairs = {k: list(zip(base[k], other[k])) for k in base}
    return {
        "next_token": sum(a == b for a, b in pairs["next_token"]) / len(pairs["next_token"]),
        "continuation_identical": sum(a == b for a, b in pairs["continuation"]) / len(pairs["continuation"]),
        "continuation_first_4": sum(a[:4] == b[:4] for a, b in pairs["continuation"]) / len(pairs["continuation"]),
        "chat_identical": sum(a == b for a, b in pairs["chat"]) / len(pairs["chat"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="editserve bench quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="int4,int8", help="comma-separated, of: int4, int8")
    ap.add_argument("--n", type=int, default=200, help="records (probes) of the acceptance split")
    ap.add_argument("--dataset", default="counterfact", choices=datasets.DATASETS)
    ap.add_argument("--tokens", type=int, default=16, help="continuation: greedy tokens")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None)
    options.add_model(ap)
    options.add_cache_dir(ap)
    args = options.resolve(ap.parse_args(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    from editors.backbone import load_backbone

    records = [r for r in datasets.load(args.dataset, "acceptance", None, datasets.data_root(args.data_dir))]
    records = [r for r in records if r.loc_prompt and r.loc_answer][: args.n]
    base = answers(load_backbone(args.model, args.cache_dir, quant="none"), records, args.tokens)
    result: dict = {"dataset": args.dataset, "n": len(records), "tokens": args.tokens, "against": "float32 (none)"}
    for mode in [m for m in args.modes.split(",") if m]:
        quantised = load_backbone(args.model, args.cache_dir, quant=mode)
        result[mode] = compare(base, answers(quantised, records, args.tokens))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quant.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0
