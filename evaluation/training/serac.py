"""`editserve train-serac`: fine-tune SERAC's counterfactual model, a LoRA adapter on the backbone.

Examples are (edit, in-scope query -> edit target), as in the paper's equation 3: the edit is a train
record's (prompt, target), the query is its paraphrase or the prompt itself; the loss is the target's
negative log-likelihood (plus the newline that ends the answer line) after the counterfactual prompt.
Only the train files are read: zsre_mend_train-1k.json from --zsre-start on (records before it are
held out for measurement) and counterfact-train.json. The adapter is written to
<data dir>/serac/adapter (peft format); a server on that data dir uses it when it starts. With
--shared it goes to <cache dir>/serac/<model>/adapter instead, which every data dir without an adapter
of its own uses.

    editserve train-serac [--data-dir DIR] [--chat-records 100] [--steps 150] [--batch 8] [--lr 1e-3] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import torch

from editors.backbone import encode_prompt, encode_target, load_backbone, padded
from editors.serac.adapter import META, default_adapter_dir, shared_adapter_dir
from editors.serac.config import SeracConfig
from evaluation import datasets, options
from evaluation.training.serac_chat import chat_examples

log = logging.getLogger(__name__)


def train_records(zsre_start: int, cf_count: int) -> list[datasets.Record]:
    """The train files only: zsre_mend_train-1k.json from zsre_start on, the first cf_count records of
    counterfact-train.json (the dev split of evaluation/datasets.py)."""
    return datasets.zsre("dev")[zsre_start:] + datasets.counterfact("dev")[:cf_count]


def chat_records(zsre_start: int, n: int) -> list[datasets.Record]:
    """The records answered as chat turns: n // 2 from each train file (zsRE from zsre_start on)."""
    return datasets.zsre("dev")[zsre_start:][: n // 2] + datasets.counterfact("dev")[: n - n // 2]


def examples(records, template: str) -> list[tuple[str, str]]:
    """(counterfactual prompt, target) pairs: each edit with its paraphrase and with its own prompt."""
    out = []
    for r in records:
        for query in (r.paraphrase, r.prompt):
            out.append((template.format(prompt=r.prompt, target=r.target, query=query), r.target))
    return out


def encode(tok, text: str, target: str, newline: list[int]) -> tuple[list[int], list[int]]:
    p_ids, t_ids = encode_prompt(tok, text), encode_target(tok, text, target) + newline
    return p_ids + t_ids, [-100] * len(p_ids) + t_ids


def encode_chat(tok, prompt: str, answer: str, ended: bool) -> tuple[list[int], list[int]]:
    """A chat example: the assistant's answer (no space before its first word, as a turn begins),
    closed by the end of turn where the model closed it."""
    p_ids = encode_prompt(tok, prompt)
    a_ids = tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if ended else [])
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def batches(encoded, batch_size: int, pad: int, rng: random.Random):
    order = list(range(len(encoded)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [encoded[i] for i in order[start : start + batch_size]]
            ids, mask = padded([s for s, _ in chunk], pad, left=False)
            labels, _ = padded([lab for _, lab in chunk], -100, left=False)
            yield ids, labels, mask


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="editserve train-serac", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default=None, help="server data dir (default EDITSERVE_DATA_DIR or ./data)")
    ap.add_argument("--out", default=None, help="adapter directory (default <data dir>/serac/adapter)")
    ap.add_argument(
        "--shared",
        action="store_true",
        help="write to <cache dir>/serac/<model>/adapter, used by every data dir without its own",
    )
    options.add_model(ap)
    options.add_cache_dir(ap)
    ap.add_argument("--zsre-start", type=int, default=300, help="zsRE train records before this are held out")
    ap.add_argument("--cf-count", type=int, default=2000, help="CounterFact train records to use")
    ap.add_argument(
        "--chat-records", type=int, default=100, help="train records answered as chat turns (half zsRE, half CF)"
    )
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    return options.resolve(ap.parse_args(argv))


def out_dir(args) -> Path:
    """Where the adapter goes: --out, else the shared cache (--shared), else the server's data dir."""
    if args.out is None and args.shared:
        args.out = shared_adapter_dir(args.cache_dir, args.model)
    if args.out is None:
        data_dir = args.data_dir
        if data_dir is None:
            from app.core.config import Settings

            data_dir = Settings().data_dir
        args.out = default_adapter_dir(data_dir)
    return Path(args.out).expanduser()


def train(args, backbone, encoded: list) -> tuple[object, float | None, float]:
    """LoRA on the backbone over the encoded examples; returns the model, the running loss, the start."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.05,
        bias="none",
        target_modules=args.targets.split(","),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(backbone.model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / args.steps))
    stream = batches(encoded, args.batch, backbone.tokenizer.pad_token_id, random.Random(args.seed))
    t0, running = time.time(), None
    for step in range(args.steps):
        ids, labels, mask = next(stream)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 20 == 0 or step == args.steps - 1:
            log.info("step %d/%d loss %.4f (avg %.4f) %.0fs", step, args.steps, loss.item(), running, time.time() - t0)
    return model, running, t0


def save(model, out: Path, meta: dict) -> None:
    # Written beside the target and renamed, so a server never starts on half an adapter.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    (tmp / META).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, out)
    log.info("adapter saved to %s", out)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = out_dir(args)
    template, system = SeracConfig().template, SeracConfig().chat_system
    records = train_records(args.zsre_start, args.cf_count)
    backbone = load_backbone(args.model, args.cache_dir, torch.device("cpu"))
    tok = backbone.tokenizer
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    encoded = [encode(tok, text, target, newline) for text, target in examples(records, template)]
    chats = []
    if args.chat_records and getattr(tok, "chat_template", None) is not None:
        t = time.time()
        chats = chat_examples(backbone, chat_records(args.zsre_start, args.chat_records), system, args.seed)
        log.info("%d chat examples written by the model in %.0fs", len(chats), time.time() - t)
        # As many one-line answers as chat turns: each kind is half of what the adapter sees.
        encoded = random.Random(args.seed).sample(encoded, min(len(encoded), len(chats)))
        encoded += [encode_chat(tok, *c) for c in chats]
    log.info("%d records -> %d examples; %d steps of %d", len(records), len(encoded), args.steps, args.batch)
    model, running, t0 = train(args, backbone, encoded)
    meta = {
        "template": template,
        "chat_system": system if chats else None,
        "records": {"zsre_start": args.zsre_start, "cf_count": args.cf_count, "chat": args.chat_records},
        "examples": len(encoded),
        "chat_examples": len(chats),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": args.targets,
        "final_loss": running,
        "seconds": round(time.time() - t0),
        "model": args.model,
    }
    save(model, out, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
