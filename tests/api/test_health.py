"""GET /health, and the whole server over real HTTP on 127.0.0.1 (uvicorn, as `editserve serve` runs it)."""

import socket
import threading
import time

import httpx
import uvicorn

from app.main import create_app
from tests.api.helpers import PROMPT, TARGET, create


def test_health_reports_model_and_active_edits(client, settings):
    assert client.get("/health").json() == {"status": "ok", "model": settings.model, "edits_active": 0}
    edit = create(client)
    create(client, "Gold has the chemical symbol", "Au")
    assert client.get("/health").json()["edits_active"] == 2
    client.delete(f"/edits/{edit['id']}")
    assert client.get("/health").json()["edits_active"] == 1


def test_served_by_uvicorn_on_localhost(settings):
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/health").json()["status"] == "ok"
            edit = http.post("/edits", json={"prompt": PROMPT, "target": TARGET})
            assert edit.status_code == 201
            out = http.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).json()
            assert out["tokens"][0] == {"text": " " + TARGET, "edit_id": edit.json()["id"]}
            assert http.get("/nowhere").json() == {"detail": "Not Found"}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
