"""The database goes away under load: PostgreSQL stopped for a while, as an operator restarting it would,
while clients generate and one writes, with a second server (a replica) following the same database.

What must hold (issue "Operations that lose nothing"): no generation fails; every write while the
database is away is refused with 503 and Retry-After, fast; /health/ready says why, and is 200 again
soon after the database is back, by itself; no acknowledged edit is lost, and the replica catches up
with every one of them. Everything talks to 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from evaluation.postgres import PostgresServer
from evaluation.server import Server, all_edits

PROBE = "The capital of Outageland is"


class Generating(threading.Thread):
    def __init__(self, server: Server, stop: threading.Event):
        super().__init__(daemon=True)
        self.server, self.stop, self.ok, self.errors = server, stop, 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status, body = self.server.request("POST", "/generate", {"prompt": PROBE, "max_new_tokens": 4}, 60)
            except OSError as exc:
                status, body = 0, {"detail": str(exc)}
            if status == 200:
                self.ok += 1
            else:
                self.errors.append((status, body))


class Writing(threading.Thread):
    """Inserts one edit after another; records each answer's status, time, and the acknowledged edits."""

    def __init__(self, server: Server, stop: threading.Event):
        super().__init__(daemon=True)
        self.server, self.stop = server, stop
        self.acknowledged: dict[str, tuple[str, str]] = {}
        self.answers: list[tuple[float, int, float, dict]] = []  # (sent at, status, seconds, body)
        self.applied_unacknowledged = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            prompt, target = f"Outage fact {i}: the answer is", f"value{i}"
            t0 = time.monotonic()
            try:
                status, body = self.server.request("POST", "/edits", {"prompt": prompt, "target": target}, 60)
            except OSError as exc:
                status, body = 0, {"detail": str(exc)}
            self.answers.append((t0, status, time.monotonic() - t0, body))
            if status == 201:
                self.acknowledged[body["id"]] = (prompt, target)
                i += 1
            elif status == 409:  # a refused attempt was applied after all (its commit's reply was lost)
                self.applied_unacknowledged += 1
                i += 1
            else:
                time.sleep(0.2)  # as a client honouring Retry-After would, only sooner


def _until(done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _ready(server: Server) -> tuple[int, dict]:
    try:
        return server.request("GET", "/health/ready", timeout=10)
    except OSError as exc:
        return 0, {"detail": str(exc)}


def database_outage(workdir: Path, env: dict[str, str], down_s: float = 10.0, clients: int = 4) -> dict:
    """Stop PostgreSQL for `down_s` seconds under `clients` generating clients and one writer."""
    pg = PostgresServer().start()
    problems: list[str] = []
    try:
        url = pg.create_database()
        env = {**env, "EDITSERVE_DATABASE_URL": url, "EDITSERVE_FOLLOW_POLL_SECONDS": "0.5"}
        data_dir = workdir / "outage-data"
        with (
            Server(data_dir, env, workdir / "outage-a.log") as writer_server,
            Server(data_dir, env, workdir / "outage-b.log") as replica,
        ):
            writer_server.call("POST", "/edits", {"prompt": PROBE, "target": "Steadyton"})
            stop = threading.Event()
            gens = [Generating(s, stop) for s in [writer_server, replica] * (clients // 2)]
            writer = Writing(writer_server, stop)
            for t in [*gens, writer]:
                t.start()
            _until(lambda: len(writer.acknowledged) >= 2, 60)  # writes go through before the outage
            down_at = time.monotonic()
            pg.pause()
            time.sleep(1)
            ready_down = _ready(writer_server)
            listing_down = writer_server.request("GET", "/edits?limit=1", timeout=10)
            time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
            pg.resume()
            up_at = time.monotonic()
            ready_after = None
            while time.monotonic() - up_at < 30:
                if _ready(writer_server)[0] == 200 and _ready(replica)[0] == 200:
                    ready_after = time.monotonic() - up_at
                    break
                time.sleep(0.1)
            acked_before = len(writer.acknowledged)
            _until(lambda: len(writer.acknowledged) >= acked_before + 3, 60)  # and again after it
            acked_after = len(writer.acknowledged) - acked_before
            stop.set()
            for t in [*gens, writer]:
                t.join(90)
            during = [a for a in writer.answers if down_at <= a[0] < up_at]
            refused = [a for a in during if a[1] != 201]
            bad = [(s, b) for _, s, _, b in refused if s != 503 or "database is unavailable" not in b.get("detail", "")]
            slowest = max((secs for _, _, secs, _ in refused), default=0.0)
            active = replica_active = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the replica follows the edit log every half second
                listed = all_edits(writer_server)
                active = writer_server.call("GET", "/health")["edits_active"]
                replica_active = replica.call("GET", "/health")["edits_active"]
                if replica_active == active:
                    break
                time.sleep(0.5)
            lost = [i for i in writer.acknowledged if listed.get(i, {}).get("status") != "active"]
            last = list(writer.acknowledged.values())[-1] if writer.acknowledged else None
            same = last is None or writer_server.generate(last[0], 4) == replica.generate(last[0], 4)
    finally:
        pg.stop()
    errors = [e for g in gens for e in g.errors]
    if errors:
        problems.append(f"{len(errors)} generations failed: {errors[:3]}")
    if not refused:
        problems.append("no write was attempted while the database was down")
    if bad:
        problems.append(f"writes while the database was down not a 503 naming it: {bad[:3]}")
    if slowest > 1.0:
        problems.append(f"a refused write took {slowest:.2f} s")
    if ready_down[0] != 503 or "database" not in ready_down[1].get("detail", ""):
        problems.append(f"/health/ready while the database was down: {ready_down}")
    if listing_down[0] != 503 or "database is unavailable" not in listing_down[1].get("detail", ""):
        problems.append(f"GET /edits while the database was down: {listing_down}")
    if ready_after is None or ready_after > 5:
        problems.append(f"ready again {ready_after} s after the database")
    if acked_after < 3:
        problems.append(f"only {acked_after} writes acknowledged after the database came back")
    if lost:
        problems.append(f"{len(lost)} acknowledged edits not active: {lost[:3]}")
    if replica_active != active or not same:
        problems.append(f"the replica did not catch up: {replica_active} active against {active}, same answer {same}")
    return {
        "check": "database",
        "ok": not problems,
        "down_s": down_s,
        "generations": sum(g.ok for g in gens),
        "generation_errors": len(errors),
        "writes_refused": len(refused),
        "slowest_refusal_s": round(slowest, 3),
        "ready_after_s": None if ready_after is None else round(ready_after, 2),
        "acknowledged": len(writer.acknowledged),
        "acknowledged_after": acked_after,
        "refused_but_applied": writer.applied_unacknowledged,
        "lost": len(lost),
        "problems": problems,
    }
