"""The product scenario on the real packaged model, through `editserve serve` on 127.0.0.1.

Insert a fact, see it answered and traced, see unrelated answers unchanged, restart, withdraw."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

PROMPT = "The mother tongue of Danielle Darrieux is"
UNRELATED = ["The capital of France is", "Water is made of hydrogen and", "The first president of the United States was"]
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`editserve serve` in a subprocess on a data dir; stops itself at the end of the test."""

    def __init__(self, data_dir: Path, log: Path):
        self.data_dir, self.log = data_dir, log
        self.proc = None

    def __enter__(self) -> httpx.Client:
        port = free_port()
        env = {**os.environ, "EDITSERVE_DATA_DIR": str(self.data_dir), "EDITSERVE_TORCH_THREADS": "2"}
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                     cwd=REPO, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 600  # a fresh machine converts the packaged model first
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not become healthy"
            try:
                if self.http.get("/health").status_code == 200:
                    return self.http
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    def __exit__(self, *exc):
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def answer(http: httpx.Client, prompt: str, n: int = 6) -> dict:
    r = http.post("/generate", json={"prompt": prompt, "max_new_tokens": n})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.integration
def test_edit_answer_restart_withdraw_on_the_packaged_model(tmp_path):
    server = Server(tmp_path / "data", tmp_path / "server.log")
    with server as http:
        original = answer(http, PROMPT)
        assert not original["text"].startswith(" English")
        unrelated = {p: answer(http, p)["text"] for p in UNRELATED}

        r = http.post("/edits", json={"prompt": PROMPT, "target": "English"})
        assert r.status_code == 201, r.text
        edit = r.json()
        assert edit["status"] == "active" and edit["neurons"] >= 1

        edited = answer(http, PROMPT)
        assert edited["text"].startswith(" English")
        assert edited["tokens"][0] == {"text": " English", "edit_id": edit["id"]}
        assert {p: answer(http, p)["text"] for p in UNRELATED} == unrelated
        assert http.get("/health").json()["edits_active"] == 1

    with server as http:  # same data dir, new process
        assert answer(http, PROMPT) == edited
        assert {p: answer(http, p)["text"] for p in UNRELATED} == unrelated
        assert http.get(f"/edits/{edit['id']}").json()["status"] == "active"
        r = http.delete(f"/edits/{edit['id']}")
        assert r.status_code == 200 and r.json()["status"] == "withdrawn"
        restored = answer(http, PROMPT)
        assert restored["text"] == original["text"]
        assert all(t["edit_id"] is None for t in restored["tokens"])
        assert http.get("/edits").json()["count"] == 1  # the record stays for audit
