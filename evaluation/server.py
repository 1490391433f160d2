"""A real `editserve serve` process for the harness and the tests: `python -m app.cli serve` on a free
127.0.0.1 port, on a given data dir and environment, ready once GET /health answers, stopped at the end.

    with Server(data_dir, env={"EDITSERVE_TORCH_THREADS": "1"}) as server:
        server.call("POST", "/edits", {"prompt": "...", "target": "..."})
        print(server.generate("...")["text"], server.ready_seconds)

Used by `editserve scenario`, `editserve bench` (start-to-ready) and tests/test_integration.py. Only the
standard library talks to it, so the harness needs no HTTP client package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class Server:
    """One data dir's server; start() / stop() (or `with`) as often as wanted, each start on a new port.

    The process runs in the data dir's parent (so no stray .env file is read), with the environment of
    this process plus `env`; its output goes to `log` (default: <data dir>.server.log beside it).
    `ready_timeout` bounds a start (a fresh machine converts the packaged model first, ~1 min);
    `request_timeout` one request; `stop_timeout` the wait for a clean exit before the process is killed.
    """

    def __init__(
        self,
        data_dir: Path | str,
        env: dict[str, str] | None = None,
        log: Path | str | None = None,
        ready_timeout: float = 600.0,
        request_timeout: float = 600.0,
        stop_timeout: float = 60.0,
    ):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.env = dict(env or {})
        self.log = Path(log) if log is not None else self.data_dir.parent / f"{self.data_dir.name}.server.log"
        self.ready_timeout, self.request_timeout, self.stop_timeout = ready_timeout, request_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.ready_seconds: float | None = None  # process start to the first 200 from GET /health
        self.health: dict | None = None  # that first /health answer

    # -- process ---------------------------------------------------------------------------------------
    def start(self) -> Server:
        if self.proc is not None:
            raise ServerError("already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "EDITSERVE_DATA_DIR": str(self.data_dir),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
            **self.env,
        }
        t0 = time.perf_counter()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=self.data_dir.parent,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"server exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}"
                    )
                try:
                    status, body = self.request("GET", "/health", timeout=1.0)
                    if status == 200:
                        self.ready_seconds, self.health = time.perf_counter() - t0, body
                        return self
                except OSError:
                    pass
                if time.perf_counter() - t0 > self.ready_timeout:
                    raise ServerError(f"server not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate (SIGTERM: a clean shutdown), wait, kill if it does not exit in stop_timeout."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- HTTP --------------------------------------------------------------------------------------------
    def request(self, verb: str, path: str, body: dict | None = None, timeout: float | None = None) -> tuple[int, dict]:
        """(status, JSON body) of one request; 4xx/5xx are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=verb, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.request_timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, (json.loads(raw) if raw else {})

    def call(self, verb: str, path: str, body: dict | None = None) -> dict:
        """The JSON body of a request that must succeed (2xx)."""
        status, out = self.request(verb, path, body)
        if not 200 <= status < 300:
            raise ServerError(f"{verb} {path} -> {status}: {out}")
        return out

    def generate(self, prompt: str, max_new_tokens: int = 12) -> dict:
        return self.call("POST", "/generate", {"prompt": prompt, "max_new_tokens": max_new_tokens})


def all_edits(server: Server) -> dict[str, dict]:
    """Every edit the server lists, by id (all pages)."""
    out, offset = {}, 0
    while True:
        page = server.call("GET", f"/edits?limit=1000&offset={offset}")
        out.update({e["id"]: e for e in page["data"]})
        offset += 1000
        if offset >= page["count"]:
            return out
