"""Health (live, ready), metrics and request ids; the whole server over real HTTP on 127.0.0.1."""

import threading

import httpx
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import startup
from tests.api.helpers import PROMPT, TARGET, UNRELATED, create, stop, wait_ready


def test_health_reports_model_and_active_edits(client, settings):
    assert client.get("/health").json() == {"status": "ok", "model": settings.model, "edits_active": 0}
    edit = create(client)
    create(client, "Gold has the chemical symbol", "Au")
    assert client.get("/health/ready").json()["edits_active"] == 2
    client.delete(f"/edits/{edit['id']}")
    assert client.get("/health").json()["edits_active"] == 1


def test_live_at_once_ready_only_once_loaded(settings, monkeypatch):
    release, real_start = threading.Event(), startup.start

    def slow_start(*args, **kwargs):
        assert release.wait(120)
        return real_start(*args, **kwargs)

    monkeypatch.setattr(startup, "start", slow_start)
    client = TestClient(create_app(settings))
    client.__enter__()
    try:
        assert client.get("/health/live").json() == {"status": "ok"}
        for path in ("/health/ready", "/health"):
            r = client.get(path)
            assert r.status_code == 503 and r.headers["retry-after"] == "5" and "loading" in r.json()["detail"]
        r = client.post("/generate", json={"prompt": UNRELATED})
        assert r.status_code == 503
        release.set()
        wait_ready(client.app)
        assert client.get("/health/ready").status_code == 200
        assert client.post("/generate", json={"prompt": UNRELATED}).status_code == 200
    finally:
        release.set()
        stop(client)


def test_a_failed_load_is_reported_not_hidden(settings, tmp_path):
    client = TestClient(create_app(settings.model_copy(update={"model": str(tmp_path / "no-such-model")})))
    client.__enter__()
    try:
        assert client.app.state.loaded.wait(120)
        assert client.get("/health/live").status_code == 200
        r = client.get("/health/ready")
        assert r.status_code == 503 and "failed to start" in r.json()["detail"]
    finally:
        stop(client)


def test_every_response_has_a_request_id_and_keeps_a_sane_one_sent(client):
    first, second = client.get("/health"), client.get("/nowhere")
    assert len({first.headers["x-request-id"], second.headers["x-request-id"]}) == 2
    assert client.get("/health", headers={"X-Request-Id": "trace-42"}).headers["x-request-id"] == "trace-42"
    odd = client.get("/health", headers={"X-Request-Id": "bad id\twith spaces"}).headers["x-request-id"]
    assert odd != "bad id\twith spaces" and len(odd) == 32


def _sample(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_metrics_count_requests_tokens_inserts_and_active_edits(client):
    create(client)
    client.post("/generate", json={"prompt": UNRELATED, "max_new_tokens": 3})
    client.post("/generate", json={"prompt": UNRELATED, "max_new_tokens": 2, "stream": True})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _sample(text, "editserve_http_requests_total", method="POST", route="/generate", status="200") == 2
    assert _sample(text, "editserve_http_requests_total", method="POST", route="/edits", status="201") == 1
    assert _sample(text, "editserve_http_request_duration_seconds_count", method="POST", route="/generate") == 2
    assert 2 <= _sample(text, "editserve_generated_tokens_total") <= 5
    assert _sample(text, "editserve_edit_insert_duration_seconds_count") == 1
    assert _sample(text, "editserve_edits_active", method="ireva") == 1
    assert _sample(text, "editserve_generations_waiting") == 0 and _sample(text, "editserve_generations_running") == 0
    assert _sample(text, "editserve_ready") == 1


def test_served_by_uvicorn_on_localhost(live_url):
    url, _ = live_url
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        edit = http.post("/edits", json={"prompt": PROMPT, "target": TARGET})
        assert edit.status_code == 201
        out = http.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).json()
        assert out["tokens"][0] == {"text": " " + TARGET, "edit_id": edit.json()["id"]}
        assert http.get("/nowhere").json() == {"detail": "Not Found"}
