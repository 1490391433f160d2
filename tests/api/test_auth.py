"""API keys: every route but the probes needs a key; read keys cannot change the model; each change
names its key; an edit's earlier versions are kept."""

import re

import httpx
import openai
import pytest

from app.cli import main as cli
from app.core.security import digest, load_keys
from app.main import create_app
from tests.api.helpers import OTHER_TARGET, PROMPT, TARGET, UNRELATED

READER, EDITOR, ADMIN = "r" * 20, "e" * 20, "a" * 20
KEYS = f"reader:read:{READER},alice:edit:{EDITOR},boss:admin:sha256={digest(ADMIN).hex()}"
OPEN = {("GET", "/health"), ("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/metrics")}
READ_POSTS = {"/generate", "/v1/completions", "/v1/chat/completions"}  # POST, but they change nothing


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def keyed(start):
    return start(api_keys=KEYS)


def operations(app) -> list[tuple[str, str]]:
    out = []
    for path, item in app.openapi()["paths"].items():
        for verb in item:
            out.append((verb.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return out


def test_every_route_but_the_probes_needs_a_key_and_read_keys_change_nothing(keyed):
    ops = operations(keyed.app)
    assert len(ops) >= 15 and OPEN <= set(ops)
    for verb, path in ops:
        if (verb, path) in OPEN:
            assert keyed.request(verb, path).status_code == 200, path
            continue
        for headers in ({}, auth("not-a-key-at-all"), {"Authorization": "Basic abc"}):
            r = keyed.request(verb, path, headers=headers, json={})
            assert r.status_code == 401, (verb, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            body = r.json()
            message = body["error"]["message"] if path.startswith("/v1") else body["detail"]
            assert "key" in message
        if verb != "GET" and path not in READ_POSTS:
            r = keyed.request(verb, path, headers=auth(READER), json={})
            assert r.status_code == 403 and "'read'" in r.text and "'edit'" in r.text, (verb, path)
    assert keyed.get("/edits", headers=auth(READER)).json()["count"] == 0  # nothing slipped through


def test_changes_name_their_key_and_listing_filters_by_it(keyed):
    r = keyed.post("/edits", json={"prompt": PROMPT, "target": TARGET}, headers=auth(EDITOR))
    assert r.status_code == 201 and r.json()["created_by"] == "alice"
    edit = r.json()
    keyed.post("/edits", json={"prompt": UNRELATED, "target": "chlorophyll"}, headers=auth(ADMIN))
    out = keyed.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, headers=auth(READER)).json()
    assert out["tokens"][0]["edit_id"] == edit["id"]
    mine = keyed.get("/edits", params={"created_by": "alice"}, headers=auth(READER)).json()
    assert [e["id"] for e in mine["data"]] == [edit["id"]]
    gone = keyed.delete(f"/edits/{edit['id']}", headers=auth(ADMIN)).json()
    assert gone["withdrawn_by"] == "boss" and gone["created_by"] == "alice"


def test_put_keeps_every_earlier_version_with_who_and_when(keyed):
    edit = keyed.post("/edits", json={"prompt": PROMPT, "target": TARGET}, headers=auth(EDITOR)).json()
    keyed.put(f"/edits/{edit['id']}", json={"target": "German"}, headers=auth(ADMIN))
    keyed.put(f"/edits/{edit['id']}", json={"target": OTHER_TARGET}, headers=auth(EDITOR))
    history = keyed.get(f"/edits/{edit['id']}/history", headers=auth(READER)).json()
    assert history["edit_id"] == edit["id"] and history["status"] == "active"
    rows = [(v["version"], v["target"], v["made_by"], v["replaced_by"]) for v in history["versions"]]
    assert rows == [(1, TARGET, "alice", "boss"), (2, "German", "boss", "alice"), (3, OTHER_TARGET, "alice", None)]
    assert history["versions"][0]["replaced_at"] == history["versions"][1]["made_at"]
    assert keyed.get("/edits/nope/history", headers=auth(READER)).status_code == 404


def test_the_openai_client_sends_its_api_key(settings, live_url_factory):
    url, app = live_url_factory(api_keys=KEYS)
    model = app.state.service.model_id
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=READER, max_retries=0)
    assert good.completions.create(model=model, prompt=UNRELATED, max_tokens=2, temperature=0).choices
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.body["type"] == "authentication_error"
    assert httpx.get(f"{url}/ui").status_code == 200  # the page itself is open; its calls need the key


@pytest.mark.parametrize(
    "keys, words",
    [
        ("alice:edit", "name:scope:secret"),
        ("alice:owner:" + EDITOR, "scope must be one of"),
        ("alice:edit:short", "at least 16"),
        ("alice:edit:sha256=abc", "64 hex"),
        (f"al ice:edit:{EDITOR}", "key name"),
        (f"a:read:{READER},a:edit:{EDITOR}", "same name"),
    ],
)
def test_bad_key_configuration_is_refused_at_start(settings, keys, words):
    with pytest.raises(ValueError, match=words):
        create_app(settings.model_copy(update={"api_keys": keys}))


def test_keys_file_and_the_keys_command(tmp_path, capsys):
    assert cli(["keys", "ci-bot", "--scope", "edit"]) == 0
    out = capsys.readouterr().out
    secret = re.search(r"key .*: (\S+)", out).group(1)
    entry = re.search(r"entry .*: (\S+)", out).group(1)
    file = tmp_path / "keys"
    file.write_text(f"# our keys\n{entry}  # the CI\n\n")
    (key,) = load_keys(None, file)
    assert (key.name, key.scope, key.digest) == ("ci-bot", "edit", digest(secret))
    assert secret not in file.read_text()


def test_serving_beyond_loopback_without_keys_is_refused(monkeypatch):
    for name in ("EDITSERVE_API_KEYS", "EDITSERVE_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as caught:
        cli(["serve", "--host", "0.0.0.0", "--port", "9"])
    assert "EDITSERVE_API_KEYS" in str(caught.value.code)
