"""Limits: body size (413), prompt tokens (422), import lines (422), requests per minute (429), and a
bounded queue of generations (503); each with a message naming the limit, nothing stored changed."""

import json
import threading
import time

import httpx

from tests.api.helpers import PROMPT, TARGET, UNRELATED, assert_error, listing


def test_a_body_over_the_limit_is_a_413_whether_its_length_is_declared_or_not(start):
    client = start(max_body_bytes=2000, max_import_bytes=50_000)
    big = {"prompt": PROMPT, "target": "x" * 3000}
    assert_error(client.post("/edits", json=big), 413, "limit of 2000 bytes")

    def chunked():
        yield json.dumps(big).encode()

    assert_error(client.post("/edits", content=chunked()), 413, "2000 bytes")
    r = client.post("/v1/completions", json={"model": "m", "prompt": "y" * 3000})
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("body: larger")
    lines = "".join(json.dumps({"prompt": f"{PROMPT} {i}", "target_new": TARGET}) + "\n" for i in range(60))
    assert 2000 < len(lines) < 50_000
    r = client.post("/edits/import", content=lines.encode())  # imports have their own, larger limit
    assert r.status_code == 200 and json.loads(r.text.splitlines()[-1])["summary"]["created"] == 60
    assert client.post("/edits", json={"prompt": UNRELATED, "target": TARGET}).status_code == 201


def test_prompts_over_the_token_limit_are_refused_naming_it(start):
    client = start(max_prompt_tokens=12, max_import_lines=2)
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    assert_error(client.post("/generate", json={"prompt": long}), 422, "prompt", "limit of 12")
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    assert_error(client.post("/generate", json=chat), 422, "messages", "limit of 12")  # the template's tokens count
    assert_error(client.post("/edits", json={"prompt": long, "target": TARGET}), 422, "prompt", "limit of 12")
    r = client.post("/v1/completions", json={"model": client.app.state.service.model_id, "prompt": long})
    assert r.status_code == 400 and "limit of 12" in r.json()["error"]["message"]
    three = "".join(json.dumps({"prompt": f"p{i}", "target_new": "t"}) + "\n" for i in range(3))
    assert_error(client.post("/edits/import", content=three.encode()), 422, "3 edits", "limit of 2")
    assert listing(client)["count"] == 0


def test_a_client_over_its_rate_is_told_when_to_come_back(start):
    client = start(rate_limit_per_minute=3)
    for _ in range(3):
        assert client.get("/edits").status_code == 200
    r = client.get("/edits")
    assert_error(r, 429, "rate limit", "3 requests a minute")
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert client.get("/health/ready").status_code == 200  # the probes are never limited


def test_keys_have_their_own_buckets(start):
    keys = "a:read:" + "a" * 20 + ",b:read:" + "b" * 20
    client = start(api_keys=keys, rate_limit_per_minute=2)
    for _ in range(2):
        assert client.get("/edits", headers={"Authorization": "Bearer " + "a" * 20}).status_code == 200
    assert client.get("/edits", headers={"Authorization": "Bearer " + "a" * 20}).status_code == 429
    assert client.get("/edits", headers={"Authorization": "Bearer " + "b" * 20}).status_code == 200


def test_a_full_queue_refuses_at_once_instead_of_waiting_without_bound(live_url_factory):
    url, app = live_url_factory(max_queue=1)
    service = app.state.service
    body = {"prompt": UNRELATED, "max_new_tokens": 2}
    results = []
    service.model.lock.acquire()  # the model is busy: generations wait
    try:
        waiting = threading.Thread(target=lambda: results.append(httpx.post(f"{url}/generate", json=body, timeout=60)))
        waiting.start()
        deadline = time.monotonic() + 30
        while service.queue.waiting < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(f"{url}/generate", json=body, timeout=10)
        assert_error(r, 503, "busy", "waiting")
        assert r.headers["retry-after"] == "1"
        r = httpx.post(f"{url}/v1/completions", json={"model": service.model_id, "prompt": UNRELATED}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    finally:
        service.model.lock.release()
    waiting.join(60)
    assert results[0].status_code == 200 and service.queue.waiting == 0
    assert httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 200
