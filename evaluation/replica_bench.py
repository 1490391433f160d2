"""The `replicas` part of `editserve bench serving`: how long an edit made on one server takes to act on
another server sharing its PostgreSQL database.

Two `editserve serve` processes on one database (--database-url, or a throwaway PostgreSQL server from
the Debian binaries, evaluation/postgres.py) and one data dir. --edits times, alternating the server
that makes the change: insert an edit (a fresh CounterFact dev prompt) on one, then poll the other's
GET /health until its `edits_active` counts it; then withdraw it on the other and poll the first the
same way. The lag is from the 201/200 of the change to the first /health that shows it (polled every
5 ms, so it is exact to ~5 ms plus one request). The bar: p95 of the insert lag <= 1 s.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from editserve.client import Client
from evaluation import datasets
from evaluation.server import Server

POLL_S = 0.005
GIVE_UP_S = 30.0


def _lag(client: Client, active: int) -> float:
    """Seconds until `client`'s server reports `active` live edits."""
    t0 = time.perf_counter()
    while client.health().edits_active != active:
        if time.perf_counter() - t0 > GIVE_UP_S:
            raise SystemExit(f"replicas: a change did not reach the other server within {GIVE_UP_S:.0f} s")
        time.sleep(POLL_S)
    return time.perf_counter() - t0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000


@contextlib.contextmanager
def _database(url: str | None):
    if url:
        yield url
        return
    from evaluation.postgres import PostgresServer, Unavailable

    try:
        server = PostgresServer().start()
    except Unavailable as exc:
        raise SystemExit(f"replicas: {exc}; or pass --database-url") from exc
    try:
        yield server.create_database()
    finally:
        server.stop()


def run(args, out: Path, root: Path) -> dict:
    prompts = [(r.prompt, r.target) for r in datasets.load("counterfact", "dev", None, root)][: args.edits]
    inserts, withdrawals, insert_s = [], [], []
    with _database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        env = {
            "EDITSERVE_TORCH_THREADS": str(args.threads or 1),
            "EDITSERVE_MODEL": args.model,
            "EDITSERVE_CACHE_DIR": args.cache_dir,
            "EDITSERVE_DATABASE_URL": url,
        }
        data = Path(tmp) / "data"
        with (
            Server(data, env=env, log=out / "server-replica-a.log") as a,
            Server(data, env=env, log=out / "server-replica-b.log") as b,
            Client(a.url) as ca,
            Client(b.url) as cb,
        ):
            for i, (prompt, target) in enumerate(prompts):
                maker, other = (ca, cb) if i % 2 == 0 else (cb, ca)
                t0 = time.perf_counter()
                edit = maker.create_edit(prompt, target)
                insert_s.append(time.perf_counter() - t0)
                inserts.append(_lag(other, 1))
                other.withdraw_edit(edit.id)
                withdrawals.append(_lag(maker, 0))
    return {
        "edits": len(inserts),
        "model": args.model,
        "database": "given (--database-url)" if args.database_url else "a throwaway PostgreSQL server",
        "insert_lag_ms": {"p50": _pct(inserts, 50), "p95": _pct(inserts, 95), "max": max(inserts) * 1000},
        "withdraw_lag_ms": {"p50": _pct(withdrawals, 50), "p95": _pct(withdrawals, 95), "max": max(withdrawals) * 1000},
        "insert_request_ms_median": statistics.median(insert_s) * 1000,
        "how": "insert on one server, poll the other's /health every 5 ms; withdraw on that one, poll the first",
    }
