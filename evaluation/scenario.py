"""`editserve scenario`: hand-written entity edits tried as a user would, over HTTP against a real
server process (`python -m app.cli serve` on 127.0.0.1, evaluation/server.py).

The edits (evaluation/entity_edits.json, 30 of the kind "The Louvre is located in" -> "Madrid") are all
made at once on a fresh data dir with the chosen method (default: the server's default), and each is
tried five ways, with 16-token greedy answers:

  prompt         the edit's own prompt: the answer contains the target, its first token names the edit
  paraphrase     a rewording of the prompt: the answer contains the target
  chat           the fact asked as a chat question (`messages`): the answer contains the target
  same_relation  the same relation about another subject: the answer is exactly as before the edits
  same_subject   another relation of the same subject: the answer is exactly as before the edits

A set that also gives each edit's subject, old fact (`truth`), open request and yes/no question
(evaluation/entity_edits_wild.json) is judged in the wild too (evaluation/judge.py), chat answers of
40 tokens read whole:

  chat_coherent  the chat question: the answer states the target, not the old fact, no splice
  open_coherent  "Tell me about <subject>." (48 tokens): coherent as above, and about the subject
                 (names it, says more than the target)
  yes_no         the yes/no question asked with the target and with the old fact: "Yes" to the
                 first and "No" to the second, both

then the same after a restart, and the first --withdraw edits withdrawn: their prompts and chat
questions answered exactly as before the edits again. Prints one JSON line with the shares.

    editserve scenario [--method ireva|serac] [--edits FILE] [--data-dir DIR] [--env KEY=VALUE ...]
    editserve scenario --edits evaluation/entity_edits_wild.json   # judged in the wild too
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from evaluation.judge import coherent, told
from evaluation.server import Server
from evaluation.wild import CHAT_TOKENS, OPEN_TOKENS, verdict

EDITS_FILE = Path(__file__).with_name("entity_edits.json")
KINDS = ("prompt", "paraphrase", "chat", "same_relation", "same_subject")
WILD_KINDS = ("chat_coherent", "open_coherent", "yes_no")
TOKENS = 16


def chat(server: Server, question: str, tokens: int = TOKENS) -> dict:
    body = {"messages": [{"role": "user", "content": question}], "max_new_tokens": tokens}
    return server.call("POST", "/generate", body)


def ask(server: Server, kind: str, edit: dict) -> dict:
    if kind == "chat":
        return chat(server, edit["question"])
    if kind == "chat_coherent":
        return chat(server, edit["question"], CHAT_TOKENS)
    if kind == "open_coherent":
        return chat(server, edit["open"], OPEN_TOKENS)
    if kind == "yes_no":  # two answers: to the question naming the target, then the old fact
        yes, no = (chat(server, edit["yes_no"].format(fact))["text"] for fact in (edit["target"], edit["truth"]))
        return {"text": f"{yes} | {no}", "verdicts": [verdict(yes), verdict(no)]}
    return server.call("POST", "/generate", {"prompt": edit[kind], "max_new_tokens": TOKENS})


def check(kind: str, edit: dict, out: dict, before: dict, edit_id: str) -> bool:
    if kind in ("same_relation", "same_subject"):
        return out == before[kind, edit["prompt"]]
    if kind in ("chat_coherent", "open_coherent"):
        judge = coherent if kind == "chat_coherent" else told
        return judge(out["text"], edit["target"], edit["truth"], edit["subject"])
    if kind == "yes_no":
        return out["verdicts"] == ["yes", "no"]
    ok = edit["target"].lower() in out["text"].lower()
    return ok and (kind != "prompt" or out["tokens"][0]["edit_id"] == edit_id)


def kinds(edits: list[dict]) -> tuple[str, ...]:
    """The kinds the set can be judged on: the wild ones where every edit gives what they need."""
    wild = all(all(e.get(f) for f in ("subject", "truth", "open", "yes_no")) for e in edits)
    return KINDS + WILD_KINDS if edits and wild else KINDS


def measure(server: Server, edits: list[dict], ids: list[str], before: dict) -> tuple[dict, list]:
    shares, misses = {}, []
    for kind in kinds(edits):
        good = 0
        for edit, edit_id in zip(edits, ids):
            out = ask(server, kind, edit)
            if check(kind, edit, out, before, edit_id):
                good += 1
            else:
                misses.append({"kind": kind, "edit": edit["prompt"], "target": edit["target"], "got": out["text"]})
        shares[kind] = round(good / len(edits), 3)
    return shares, misses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve scenario", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--method", default=None, help="editing method of the edits (default: the server's default)")
    ap.add_argument("--edits", default=str(EDITS_FILE), help="JSON list of edits with the five kinds of query")
    ap.add_argument("--n", type=int, default=None, help="only the first N edits")
    ap.add_argument("--data-dir", default=None, help="server data dir; default: a fresh temporary directory")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    ap.add_argument("--withdraw", type=int, default=5)
    args = ap.parse_args(argv)
    env = {"EDITSERVE_TORCH_THREADS": "1", **dict(kv.split("=", 1) for kv in args.env)}
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="editserve-scenario-"))
    edits = json.loads(Path(args.edits).read_text())[: args.n]
    method = {"method": args.method} if args.method else {}

    t0 = time.time()
    server = Server(data_dir, env)
    with server:
        before = {(kind, e["prompt"]): ask(server, kind, e) for e in edits for kind in KINDS}
        made = [server.call("POST", "/edits", {"prompt": e["prompt"], "target": e["target"], **method}) for e in edits]
        ids = [m["id"] for m in made]
        shares, misses = measure(server, edits, ids, before)
    with server:  # the same data dir, a new process
        restarted, _ = measure(server, edits, ids, before)
        for edit_id in ids[: args.withdraw]:
            server.call("DELETE", f"/edits/{edit_id}")
        back = sum(
            ask(server, kind, e) == before[kind, e["prompt"]]
            for e in edits[: args.withdraw]
            for kind in ("prompt", "chat")
        )
    print(
        json.dumps(
            {
                "method": made[0]["method"] if made else args.method,
                "edits": len(edits),
                **shares,
                "after_restart": restarted,
                "withdrawn": args.withdraw,
                "withdrawn_answers_as_before": f"{back}/{2 * min(args.withdraw, len(edits))}",
                "seconds": round(time.time() - t0),
                "data_dir": str(data_dir),
                "misses": misses,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
