"""Two `editserve serve` processes on one PostgreSQL database and one data dir (the tiny model): an edit
made on either acts on the other, the database refuses a prompt both try to take, a server killed in the
middle of inserts leaves the other consistent, and a server that starts late or loses its connection
catches up from the edit log. Every wait is bounded; nothing asserts a speed (that is `editserve bench
replicas`)."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from evaluation.server import Server
from tests.api.helpers import OTHER_PROMPT, PROMPT, TARGET

pytestmark = pytest.mark.integration
WAIT_S = 30  # the longest any change may take to reach the other server here


@pytest.fixture
def replicas(tmp_path, tiny_model_dir, postgres_url):
    """replicas(name) -> a started server on the shared database and data dir; all stopped at the end."""
    env = {
        "EDITSERVE_MODEL": str(tiny_model_dir),
        "EDITSERVE_DATABASE_URL": postgres_url,
        "EDITSERVE_CACHE_DIR": str(tmp_path / "cache"),
        "EDITSERVE_SCOPE__USE_TRAINED": "false",
        "EDITSERVE_TORCH_THREADS": "1",
        "EDITSERVE_DEVICE": "cpu",
    }
    started: list[Server] = []

    def start(name: str) -> Server:
        server = Server(tmp_path / "data", env, tmp_path / f"{name}.log", ready_timeout=180, request_timeout=120)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def until(check, what: str):
    """check()'s first truthy value within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def owner(server: Server, prompt: str = PROMPT) -> str | None:
    return server.generate(prompt, 6)["tokens"][0]["edit_id"]


def test_a_change_on_either_server_acts_on_the_other(replicas):
    a, b = replicas("a"), replicas("b")
    before = b.generate(PROMPT, 6)
    edit = a.call("POST", "/edits", {"prompt": PROMPT, "target": TARGET})
    until(lambda: owner(b) == edit["id"], "B answers with A's edit")
    edited = b.generate(PROMPT, 6)
    assert edited == a.generate(PROMPT, 6) and edited["text"].lstrip().startswith(TARGET)

    b.call("PUT", f"/edits/{edit['id']}", {"target": "Sydney"})
    until(lambda: a.generate(PROMPT, 6)["text"].lstrip().startswith("Sydney"), "A answers with B's new target")

    b.call("DELETE", f"/edits/{edit['id']}")
    until(lambda: a.generate(PROMPT, 6) == before, "A answers as before the edit once B withdrew it")
    assert a.call("GET", "/health")["edits_active"] == b.call("GET", "/health")["edits_active"] == 0


def test_two_servers_never_both_accept_one_prompt(replicas):
    a, b = replicas("a"), replicas("b")
    for i in range(4):
        prompt, statuses = f"{OTHER_PROMPT} (round {i})", []

        def post(server, prompt=prompt, statuses=statuses):
            statuses.append(server.request("POST", "/edits", {"prompt": prompt, "target": TARGET})[0])

        threads = [threading.Thread(target=post, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(statuses) == [201, 409], statuses
    listed = a.call("GET", "/edits?status=active")
    assert listed["count"] == 4 and len({e["prompt"] for e in listed["data"]}) == 4


def test_a_server_killed_during_inserts_leaves_the_other_consistent(replicas, postgres_url):
    a, b = replicas("a"), replicas("b")
    made: list[str] = []

    def insert_many():
        for i in range(40):
            try:
                status, body = a.request("POST", "/edits", {"prompt": f"Fact number {i} is", "target": TARGET})
            except OSError:  # A was killed while answering
                return
            if status != 201:
                return
            made.append(body["id"])

    inserting = threading.Thread(target=insert_many)
    inserting.start()
    until(lambda: len(made) >= 3, "A made three edits")
    os.kill(a.proc.pid, signal.SIGKILL)  # in the middle of its inserts
    inserting.join(120)

    with psycopg.connect(postgres_url) as con:
        active = [r[0] for r in con.execute("SELECT id FROM edits WHERE status = 'active' ORDER BY created_at")]
    assert set(made) <= set(active) and len(active) >= 3  # every acknowledged edit was committed
    until(lambda: b.call("GET", "/health")["edits_active"] == len(active), "B holds every committed edit")
    for i, edit_id in enumerate(active):
        assert owner(b, f"Fact number {i} is") == edit_id
    # A died holding nothing B waits for: B changes the edits at once
    edit = b.call("POST", "/edits", {"prompt": PROMPT, "target": TARGET})
    assert owner(b) == edit["id"]


def test_a_late_server_and_one_that_lost_its_connection_catch_up(replicas, postgres_url):
    a = replicas("a")
    first = a.call("POST", "/edits", {"prompt": PROMPT, "target": TARGET})
    b = replicas("b")  # starts after the edit
    assert owner(b) == first["id"]

    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as con:  # every server's connections drop
        con.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    second = a.call("POST", "/edits", {"prompt": OTHER_PROMPT, "target": TARGET})
    until(lambda: owner(b, OTHER_PROMPT) == second["id"], "B applies an edit made after its connection dropped")
