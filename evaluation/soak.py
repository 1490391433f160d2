"""`editserve soak`: generating clients and one client that inserts, updates and withdraws edits, all at
once for a while, against a real server process on 127.0.0.1.

Each answer must be one the model gives with the edit set as it was before or after some change: for
a prompt, its unedited answer or its answer with one of the targets its edit had (measured first, one
edit at a time; the prompts are far apart, so an edit answers only its own). An answer mixing two edit
sets (tokens of one target, then of another) is "mixed". Any 5xx fails the soak too. Prints one JSON
line; exits 1 on a 5xx or a mixed answer. Bounded by --seconds.

    editserve soak [--seconds 60] [--clients 8] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

from evaluation.server import Server

FACTS = [
    ("The Eiffel Tower is located in", ("Rome", "Berlin")),
    ("Photosynthesis turns sunlight into", ("plastic", "music")),
    ("The chemical symbol for gold is", ("Zn", "Pb")),
    ("The author of Hamlet is", ("Goethe", "Tolstoy")),
    ("The largest ocean on Earth is the", ("Atlantic", "Arctic")),
    ("Bees make a sweet food called", ("cheese", "bread")),
]
TOKENS = 8


def reference(server: Server) -> dict[str, dict[str, str]]:
    """Per prompt: its answer unedited ("") and with each target, one edit at a time."""
    out = {}
    for prompt, targets in FACTS:
        answers = {"": server.generate(prompt, TOKENS)["text"]}
        for target in targets:
            edit = server.call("POST", "/edits", {"prompt": prompt, "target": target})
            answers[target] = server.generate(prompt, TOKENS)["text"]
            server.call("DELETE", f"/edits/{edit['id']}")
        out[prompt] = answers
    return out


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"generations": 0, "changes": 0, "5xx": 0, "mixed": 0, "other_errors": 0}
        self.examples: list[str] = []

    def add(self, key: str, example: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if example and len(self.examples) < 5:
                self.examples.append(example)


def generator(server: Server, valid: dict, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        prompt = rng.choice(FACTS)[0]
        try:
            status, body = server.request("POST", "/generate", {"prompt": prompt, "max_new_tokens": TOKENS})
        except OSError as exc:
            tally.add("other_errors", f"generate: {exc}")
            continue
        if status >= 500:
            tally.add("5xx", f"generate {status}: {body}")
        elif status != 200:
            tally.add("other_errors", f"generate {status}: {body}")
        elif body["text"] not in valid[prompt].values() or len({t["edit_id"] for t in body["tokens"]} - {None}) > 1:
            tally.add("mixed", f"{prompt!r} -> {body['text']!r}")
        else:
            tally.add("generations")


def editor(server: Server, until: float, tally: Tally, seed: int) -> None:
    rng, live = random.Random(seed), {}  # prompt -> (edit id, target)
    while time.monotonic() < until:
        prompt, targets = rng.choice(FACTS)
        try:
            if prompt not in live:
                target = rng.choice(targets)
                status, body = server.request("POST", "/edits", {"prompt": prompt, "target": target})
                if status == 201:
                    live[prompt] = (body["id"], target)
            elif rng.random() < 0.5:
                edit_id, target = live[prompt]
                other = targets[1] if target == targets[0] else targets[0]
                status, body = server.request("PUT", f"/edits/{edit_id}", {"target": other})
                if status == 200:
                    live[prompt] = (edit_id, other)
            else:
                status, body = server.request("DELETE", f"/edits/{live.pop(prompt)[0]}")
        except OSError as exc:
            tally.add("other_errors", f"change: {exc}")
            continue
        if status >= 500:
            tally.add("5xx", f"change {status}: {body}")
        elif status >= 400:
            tally.add("other_errors", f"change {status}: {body}")
        else:
            tally.add("changes")


def soak(workdir: Path, env: dict[str, str], seconds: float = 60, clients: int = 8) -> dict:
    with Server(workdir / "soak-data", env, workdir / "soak-server.log") as server:
        valid = reference(server)
        tally = Tally()
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=generator, args=(server, valid, until, tally, i)) for i in range(clients)]
        threads.append(threading.Thread(target=editor, args=(server, until, tally, 1000)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 600)
    ok = tally.counts["5xx"] == 0 and tally.counts["mixed"] == 0 and tally.counts["generations"] > 0
    return {
        "check": "soak",
        "seconds": seconds,
        "clients": clients,
        **tally.counts,
        "examples": tally.examples,
        "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory(prefix="editserve-soak-") as tmp:
        result = soak(Path(tmp), env, args.seconds, args.clients)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
