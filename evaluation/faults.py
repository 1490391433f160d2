"""`editserve fault`: an acknowledged edit survives kill -9, and a full disk loses nothing.

  crash  a client streams --inserts edits into a real server process (127.0.0.1); the process is killed
         with SIGKILL after a different number of acknowledgements in each of --runs runs; after each
         restart (no manual help) every edit that got a 201 must be present, active and answer as it
         did, no edit may be half-present (every row active and loadable, or absent), and no blob file
         may lack its row.
  disk   the data dir is a small tmpfs (mounted here: needs root), filled up before each of 20 inserts,
         each time with a different number of bytes left free: each insert is refused with a clear 507
         and nothing stored changes, or it is stored whole; no half edit, no leftover file, the server
         answers throughout; once space is freed the next insert succeeds.

  backup the data dir of --edits edits is backed up (`editserve backup`) while 4 clients generate and
         restored into a new one: its server lists the same edits and answers 50 prompts word for word.

Prints one JSON line per check and exits 1 if any failed. Bounded: every run has a count and a timeout.

  database  PostgreSQL (a throwaway server, local) stopped for --down seconds while 4 clients generate
         and one writes, with a replica following: no generation fails, writes are refused with a
         fast 503, /health/ready says why and is ready again soon after, nothing acknowledged is lost,
         and the replica catches up (evaluation/outage.py).

    editserve fault [--runs 3] [--inserts 200] [--only crash|disk|database] [--down 10] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from evaluation.server import Server, all_edits
from storage.repository import BLOB_DIR, DB_FILE


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
        present = all_edits(server)
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


def _fill(path: Path) -> None:
    """Write zeros to `path` until the disk is full, to the last byte."""
    with path.open("ab", buffering=0) as f:
        for chunk in (65536, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


def disk_full(workdir: Path, env: dict[str, str], size_kb: int = 4096, attempts: int = 20) -> dict:
    """Inserts into a full data dir, each with a different number of bytes left free (so the write
    fails in the blob, in the database, or not at all): each is a 507 that changes nothing, or a 201
    of a whole edit; no half-written edit or leftover file, and the server answers throughout. After
    space is freed, inserts work again."""
    data_dir = workdir / "full-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(data_dir)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        return {"check": "disk", "ok": None, "skipped": f"cannot mount a tmpfs here: {mounted.stderr.strip()}"}
    problems, refused, accepted = [], 0, 0
    try:
        with Server(data_dir, env, workdir / "full-server.log") as server:
            first = server.call("POST", "/edits", {"prompt": "The capital of Fullland is", "target": "Spaceton"})
            answer = server.generate(first["prompt"], 4)
            filler = data_dir / "filler"
            for attempt in range(attempts):
                _fill(filler)
                left = int(1024 * 2 ** (attempt / 2)) if attempt else 0  # 0, 1 KB .. 0.7 MB
                os.truncate(filler, max(0, filler.stat().st_size - left))
                before = all_edits(server)
                edit = {"prompt": f"The capital of Full{attempt}land is", "target": f"Nowhere{attempt}"}
                status, body = server.request("POST", "/edits", edit)
                after = all_edits(server)
                if status == 507 and "full" in body.get("detail", ""):
                    refused += 1
                    if after != before:
                        problems.append(f"attempt {attempt}: a refused insert changed what is stored")
                elif status == 201:
                    accepted += 1
                    if set(after) - set(before) != {body["id"]} or after[body["id"]]["status"] != "active":
                        problems.append(f"attempt {attempt}: an accepted insert is not whole: {after.get(body['id'])}")
                else:
                    problems.append(f"attempt {attempt}: insert on a full disk: {status} {body}")
                half = [i for i, e in after.items() if e["status"] == "corrupt" or e["error"]]
                orphans = _orphans(data_dir)
                if half or orphans:
                    problems.append(f"attempt {attempt}: half edits {half[:3]}, leftover files {orphans[:3]}")
                if server.generate(first["prompt"], 4) != answer:
                    problems.append(f"attempt {attempt}: the first edit's answer changed")
            filler.unlink()
            status, body = server.request("POST", "/edits", {"prompt": "The capital of Fullerland is", "target": "X"})
            if status != 201:
                problems.append(f"insert after space came back: {status} {body}")
    finally:
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)
    return {
        "check": "disk",
        "ok": not problems,
        "attempts": attempts,
        "refused": refused,
        "accepted": accepted,
        "problems": problems,
    }


def backup_while_serving(workdir: Path, env: dict[str, str], edits: int = 1000, probes: int = 50) -> dict:
    """`editserve backup` of `edits` edits while 4 clients generate, restored into a new data dir: the
    restored server lists the same edits and answers `probes` prompts as the original, word for
    word; both start times are reported."""
    from evaluation.outage import Generating

    data, copy, saved = workdir / "backup-data", workdir / "backup-restored", workdir / "backup"
    lines = [{"prompt": f"Backup fact {i}: the answer is", "target_new": f"value{i}"} for i in range(edits)]
    asked = [line["prompt"] for line in lines[:: max(1, edits // (probes - 5))]][: probes - 5]
    asked += ["The capital of France is", "Water boils at", "The Louvre is located in", "2 + 2 =", "Paris is in"]
    cli = [sys.executable, "-m", "app.cli"]
    run_env = {**os.environ, **env}
    problems = []
    with Server(data, env, workdir / "backup-a.log") as server:
        req = urllib.request.Request(server.url + "/edits/import", data=json.dumps(lines).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=3600) as r:  # one result line per edit, then the summary
            summary = json.loads(r.read().decode().strip().splitlines()[-1])["summary"]
        if summary["created"] != edits:
            problems.append(f"import: {summary}")
        before = [server.generate(p, 6)["text"] for p in asked]
        listed = all_edits(server)
        stop = threading.Event()
        gens = [Generating(server, stop) for _ in range(4)]
        for g in gens:
            g.start()
        t0 = time.monotonic()
        made = subprocess.run(
            [*cli, "backup", str(saved), "--data-dir", str(data)], capture_output=True, text=True, env=run_env
        )
        backup_s = time.monotonic() - t0
        stop.set()
        for g in gens:
            g.join(60)
    if made.returncode != 0:
        problems.append(f"backup: {made.stderr[-500:]}")
    done = subprocess.run(
        [*cli, "restore", str(saved), "--data-dir", str(copy)], capture_output=True, text=True, env=run_env
    )
    if done.returncode != 0:
        problems.append(f"restore: {done.stderr[-500:]}")
    with Server(data, env, workdir / "backup-a2.log") as again:
        original_start = again.ready_seconds
    with Server(copy, env, workdir / "backup-b.log") as restored:
        restored_start = restored.ready_seconds
        after = [restored.generate(p, 6)["text"] for p in asked]
        relisted = all_edits(restored)
    same = sum(a == b for a, b in zip(before, after))
    errors = [e for g in gens for e in g.errors]
    if same != len(asked) or relisted != listed:
        problems.append(f"restored: {same}/{len(asked)} answers the same, listing the same: {relisted == listed}")
    if errors:
        problems.append(f"{len(errors)} generations failed during the backup: {errors[:3]}")
    return {
        "check": "backup",
        "ok": not problems,
        "edits": len(listed),
        "backup_s": round(backup_s, 2),
        "generations_during": sum(g.ok for g in gens),
        "answers_same": f"{same}/{len(asked)}",
        "start_s_original": original_start,
        "start_s_restored": restored_start,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="editserve fault", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--inserts", type=int, default=200)
    ap.add_argument("--only", choices=("crash", "disk", "database", "backup"), default=None)
    ap.add_argument("--edits", type=int, default=1000, help="edits in the data dir backed up (backup check)")
    ap.add_argument("--down", type=float, default=10.0, help="seconds PostgreSQL is stopped (database check)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    results = []
    with tempfile.TemporaryDirectory(prefix="editserve-fault-") as tmp:
        if args.only in (None, "crash"):
            results.append(crash(Path(tmp), env, args.runs, args.inserts))
        if args.only in (None, "disk"):
            results.append(disk_full(Path(tmp), env))
        if args.only in (None, "backup"):
            results.append(backup_while_serving(Path(tmp), env, args.edits))
        if args.only in (None, "database"):
            from evaluation.outage import database_outage
            from evaluation.postgres import Unavailable

            try:
                results.append(database_outage(Path(tmp), env, args.down))
            except Unavailable as exc:
                results.append({"check": "database", "ok": None, "skipped": str(exc)})
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["ok"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
