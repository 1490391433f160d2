"""Hostile input: NUL bytes, lone surrogates, 10 MB bodies, 20,000-token prompts, path-traversal ids.
Each is a 4xx (or a harmless answer), the server stays up, memory stays bounded, nothing stored changes."""

import resource

import pytest

from tests.api.helpers import PROMPT, TARGET, UNRELATED, assert_error, create, generate, listing


def test_nul_bytes_are_refused_in_what_is_stored_and_harmless_in_a_prompt(client):
    assert_error(client.post("/edits", json={"prompt": "A\x00B is", "target": TARGET}), 422, "prompt", "NUL")
    assert_error(client.post("/edits", json={"prompt": PROMPT, "target": "x\x00"}), 422, "target", "NUL")
    r = client.post("/generate", json={"prompt": "Hello\x00 world", "max_new_tokens": 2})
    assert r.status_code == 200
    assert listing(client)["count"] == 0


@pytest.mark.parametrize(
    "path, body",
    [
        ("/edits", '{"prompt": "The \\ud800 is", "target": "x"}'),
        ("/edits", '{"prompt": "The cat is", "target": "\\udfff"}'),
        ("/generate", '{"prompt": "Say \\ud83d"}'),
        ("/generate", '{"messages": [{"role": "user", "content": "\\udc00?"}]}'),
        ("/edits/preview", '{"prompt": "The cat is", "target": "\\ud800"}'),
        ("/edits/preview", '{"prompt": "The cat is", "target": "x", "queries": ["\\ud800"]}'),
        ("/v1/chat/completions", '{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("/v1/completions", '{"model": "\\ud800", "prompt": "x"}'),
    ],
)
def test_lone_surrogates_are_a_readable_4xx(client, path, body):
    r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()  # readable JSON, even when the message quotes the input
    assert client.get("/health").status_code == 200


def test_text_the_tokenizer_drops_is_a_readable_4xx_and_stores_nothing(client):
    """A control character alone tokenises to nothing: no prompt to answer, no target to state (the
    edit was once stored, and every answer in its scope then failed with a 500)."""
    assert_error(client.post("/generate", json={"prompt": "\x06"}), 422, "prompt", "tokenizer")
    assert_error(client.post("/edits/preview", json={"prompt": "\x06", "target": "x"}), 422, "prompt")
    assert_error(client.post("/edits/preview", json={"prompt": PROMPT, "target": "\x06"}), 422, "target")
    assert_error(client.post("/edits", json={"prompt": PROMPT, "target": " \x06"}), 422, "target")
    # every method, and a change as well as an insert: the check is the service's, not iReVa's
    serac = {"prompt": PROMPT, "target": "\x06", "method": "serac"}
    assert_error(client.post("/edits", json=serac), 422, "target", "tokenizer")
    assert listing(client)["count"] == 0
    edit = create(client)
    assert_error(client.put(f"/edits/{edit['id']}", json={"target": "\x06"}), 422, "target", "tokenizer")
    assert client.get(f"/edits/{edit['id']}").json()["target"] == TARGET


def test_huge_bodies_and_prompts_are_refused_without_harm(client):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ten_mb = "x" * (10 * 1024 * 1024)
    for _ in range(5):
        r = client.post("/edits", content=('{"prompt": "' + ten_mb + '", "target": "y"}').encode())
        assert_error(r, 413, "limit")
    words = " ".join(["word"] * 20_000)
    assert_error(client.post("/generate", json={"prompt": words}), 422, "prompt", "tokens", "limit")
    assert_error(client.post("/edits", json={"prompt": words, "target": "y"}), 422, "limit")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, grown_mb
    assert generate(client, UNRELATED)["text"]


@pytest.mark.parametrize(
    "path", ["/edits/..%2F..%2Fetc%2Fpasswd", "/edits/../../etc/passwd", "/edits/%00", "/edits/" + "a" * 5000]
)
def test_path_traversal_ids_find_nothing(client, path):
    edit = create(client)
    for verb in ("GET", "PUT", "DELETE"):
        r = client.request(verb, path, json={"target": "x"} if verb == "PUT" else None)
        assert r.status_code in (404, 405, 422), (verb, path, r.status_code)
    assert listing(client)["data"][0]["id"] == edit["id"] and listing(client)["count"] == 1
