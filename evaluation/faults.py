"""`editserve fault`: an acknowledged edit survives kill -9, and a full disk loses nothing.

  crash  a client streams --inserts edits into a real server process (127.0.0.1); the process is killed
         with SIGKILL after a different number of acknowledgements in each of --runs runs; after each
         restart (no manual help) every edit that got a 201 must be present, active and answer as it
         did, no edit may be half-present (every row active and loadable, or absent), and no blob file
         may lack its row.
  disk   the data dir is a small tmpfs (mounted here: needs root), filled up during an insert: the
         insert is refused with a clear 507, nothing stored changes, and once space is freed the next
         insert succeeds.

Prints one JSON line per check and exits 1 if any failed. Bounded: every run has a count and a timeout.

    editserve fault [--runs 3] [--inserts 200] [--only crash|disk] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from evaluation.server import Server
from storage.repository import BLOB_DIR, DB_FILE


def _edits(server: Server) -> dict[str, dict]:
    out, offset = {}, 0
    while True:
        page = server.call("GET", f"/edits?limit=1000&offset={offset}")
        out.update({e["id"]: e for e in page["data"]})
        offset += 1000
        if offset >= page["count"]:
            return out


def _orphans(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / DB_FILE) as con:
        named = {r[0] for r in con.execute("SELECT blob FROM edits UNION SELECT blob FROM editor_states")}
    return sorted(p.name for p in (data_dir / BLOB_DIR).iterdir() if p.name not in named)


class InsertStream(threading.Thread):
    """A client inserting one edit after another until told to stop or the server is gone; it records
    every acknowledged edit, and the answer to a few of them."""

    def __init__(self, server: Server, run: int, inserts: int, acknowledged: dict, answers: dict):
        super().__init__(daemon=True)
        self.server, self.run_no, self.inserts = server, run, inserts
        self.acknowledged, self.answers = acknowledged, answers
        self.acked, self.stop = 0, threading.Event()

    def run(self) -> None:
        for i in range(self.inserts):
            if self.stop.is_set():
                return
            prompt, target = f"Crash run {self.run_no} fact {i}: the answer is", f"value{self.run_no}x{i}"
            try:
                status, body = self.server.request("POST", "/edits", {"prompt": prompt, "target": target}, timeout=60)
                if status != 201:
                    continue
                self.acknowledged[body["id"]] = (prompt, target)
                self.acked += 1
                if self.acked % 25 == 1:  # remember a few answers, to compare after the restart
                    self.answers[body["id"]] = self.server.generate(prompt, 4)
            except OSError:
                return  # the server is gone


def crash(workdir: Path, env: dict[str, str], runs: int = 3, inserts: int = 200, timeout: float = 900) -> dict:
    """--runs kill -9 runs on one data dir; returns the counts and the problems found."""
    data_dir = workdir / "crash-data"
    server = Server(data_dir, env, workdir / "crash-server.log")
    acknowledged: dict[str, tuple[str, str]] = {}
    answers: dict[str, dict] = {}
    problems: list[str] = []
    per_run = []
    for run in range(runs):
        kill_after = max(1, (run + 1) * inserts // (runs + 1))  # a different moment in each run
        server.start()
        client = InsertStream(server, run, inserts, acknowledged, answers)
        client.start()
        deadline = time.monotonic() + timeout
        while client.acked < kill_after and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        server.proc.kill()  # SIGKILL: no shutdown code runs
        server.proc.wait()
        server.proc = None
        client.stop.set()
        client.join(60)

        server.start()  # the same data dir, no manual help
        present = _edits(server)
        missing = [i for i in acknowledged if i not in present]
        inactive = [i for i in acknowledged if i in present and present[i]["status"] != "active"]
        half = [i for i, e in present.items() if e["status"] == "corrupt" or e["error"]]
        changed = [i for i, a in answers.items() if server.generate(acknowledged[i][0], 4) != a]
        orphans = _orphans(data_dir)
        server.stop()
        found = {"missing": missing, "not active": inactive, "half": half, "answer changed": changed}
        for name, ids in found.items():
            if ids:
                problems.append(f"run {run}: {len(ids)} acknowledged edits {name}: {ids[:3]}")
        if orphans:
            problems.append(f"run {run}: {len(orphans)} orphan blobs: {orphans[:3]}")
        per_run.append(
            {
                "killed_after_acks": client.acked,
                "acknowledged_total": len(acknowledged),
                "present": len(present),
                "missing": len(missing),
                "half": len(half),
                "orphans": len(orphans),
                "answers_compared": len(answers),
                "answers_changed": len(changed),
            }
        )
    return {"check": "crash", "runs": per_run, "problems": problems, "ok": not problems}


def disk_full(workdir: Path, env: dict[str, str], size_kb: int = 4096) -> dict:
    """An insert into a full data dir: 507, nothing changes; after space is freed, inserts work again."""
    data_dir = workdir / "full-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(data_dir)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        return {"check": "disk", "ok": None, "skipped": f"cannot mount a tmpfs here: {mounted.stderr.strip()}"}
    problems = []
    try:
        with Server(data_dir, env, workdir / "full-server.log") as server:
            first = server.call("POST", "/edits", {"prompt": "The capital of Fullland is", "target": "Spaceton"})
            before_edits, before_answer = _edits(server), server.generate(first["prompt"], 4)
            filler = data_dir / "filler"
            with filler.open("wb", buffering=0) as f:  # fill the disk to the last byte
                for chunk in (65536, 1):
                    try:
                        while True:
                            f.write(b"\0" * chunk)
                    except OSError:
                        pass
            second = {"prompt": "The capital of Fullerland is", "target": "Nowhere"}
            status, body = server.request("POST", "/edits", second)
            if status != 507 or "full" not in body.get("detail", ""):
                problems.append(f"insert on a full disk: {status} {body}")
            if _edits(server) != before_edits or server.generate(first["prompt"], 4) != before_answer:
                problems.append("a refused insert changed what is stored or answered")
            filler.unlink()
            status, body = server.request("POST", "/edits", second)
            if status != 201:
                problems.append(f"insert after space came back: {status} {body}")
    finally:
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)
    return {"check": "disk", "ok": not problems, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve fault", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--inserts", type=int, default=200)
    ap.add_argument("--only", choices=("crash", "disk"), default=None)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    results = []
    with tempfile.TemporaryDirectory(prefix="editserve-fault-") as tmp:
        if args.only in (None, "crash"):
            results.append(crash(Path(tmp), env, args.runs, args.inserts))
        if args.only in (None, "disk"):
            results.append(disk_full(Path(tmp), env))
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["ok"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
