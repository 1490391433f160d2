"""Edit bundles (GET /edits/export, POST /edits/import, `editserve edits`) and POST /edits/preview."""

import json

from app.edits_cli import main as edits_cli
from tests.api.helpers import (
    GOLD,
    OTHER_PROMPT,
    OTHER_TARGET,
    PROMPT,
    TARGET,
    UNRELATED,
    assert_error,
    create,
    generate,
    listing,
)


def export(client, **params) -> list[dict]:
    r = client.get("/edits/export", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def import_(client, body: str) -> tuple[list[dict], dict]:
    r = client.post("/edits/import", content=body.encode())
    assert r.status_code == 200, r.text
    results = [json.loads(line) for line in r.text.splitlines()]
    return results[:-1], results[-1]["summary"]


def test_an_export_imported_into_an_empty_data_dir_answers_the_same(client, start, tmp_path):
    a = create(client, subject="Danielle Darrieux")
    create(client, OTHER_PROMPT, OTHER_TARGET)
    withdrawn = create(client, GOLD, "Ag")
    client.delete(f"/edits/{withdrawn['id']}")
    lines = export(client)
    assert [(x["prompt"], x["target_new"], x["status"]) for x in lines] == [
        (PROMPT, TARGET, "active"),
        (OTHER_PROMPT, OTHER_TARGET, "active"),
        (GOLD, "Ag", "withdrawn"),
    ]
    assert lines[0]["subject"] == "Danielle Darrieux" and lines[0]["id"] == a["id"] and lines[0]["method"] == "ireva"
    assert [x["prompt"] for x in export(client, status="withdrawn")] == [GOLD]
    answers = {p: generate(client, p)["text"] for p in (PROMPT, OTHER_PROMPT, GOLD, UNRELATED)}

    fresh = start(data_dir=tmp_path / "elsewhere")
    results, summary = import_(fresh, "".join(json.dumps(x) + "\n" for x in lines))
    assert summary == {"created": 3, "conflict": 0, "invalid": 0, "failed": 0, "lines": 3}
    assert [(r["line"], r["result"], r["status"]) for r in results] == [
        (1, "created", "active"),
        (2, "created", "active"),
        (3, "created", "withdrawn"),
    ]
    assert {p: generate(fresh, p)["text"] for p in answers} == answers
    assert listing(fresh)["data"][0]["subject"] == "Danielle Darrieux"


def test_an_import_reports_each_line_and_applies_only_good_ones(client):
    create(client)
    body = "\n".join(
        [
            json.dumps({"prompt": OTHER_PROMPT, "target_new": OTHER_TARGET}),
            json.dumps({"prompt": PROMPT, "target_new": "German"}),  # the prompt has an active edit
            "{not json",
            json.dumps({"prompt": GOLD}),  # no target
            json.dumps({"prompt": GOLD, "target_new": "Au", "method": "rome"}),
            json.dumps({"prompt": GOLD, "target": "Au", "status": "paused"}),
            "",
            json.dumps(["a list"]),
            json.dumps({"prompt": GOLD, "target": "Au"}),  # editserve's own field name is read too
        ]
    )
    results, summary = import_(client, body)
    assert [r["result"] for r in results] == [
        "created",
        "conflict",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "created",
    ]
    assert [r["line"] for r in results] == list(range(1, 9))  # blank lines are not counted
    assert "target_new" in results[3]["detail"] and "rome" in results[4]["detail"]
    assert "status" in results[5]["detail"] and "JSON" in results[2]["detail"]
    assert summary["created"] == 2 and summary["conflict"] == 1 and summary["invalid"] == 5
    assert listing(client)["count"] == 3  # the first edit and the two created lines, nothing else


def test_a_json_list_imports_and_a_bad_body_is_a_422_that_changes_nothing(client):
    results, summary = import_(client, json.dumps([{"prompt": PROMPT, "target_new": TARGET}]))
    assert summary["created"] == 1 and results[0]["result"] == "created"
    for body, words in [("", ("no edits",)), ("[1, 2", ("JSON",)), (b"\xff\xfe", ("UTF-8",))]:
        r = client.post("/edits/import", content=body if isinstance(body, bytes) else body.encode())
        assert_error(r, 422, *words)
    assert listing(client)["count"] == 1


def test_a_preview_shows_before_and_after_and_stores_nothing(client):
    existing = create(client, OTHER_PROMPT, OTHER_TARGET)
    before = {p: generate(client, p) for p in (PROMPT, OTHER_PROMPT, UNRELATED)}
    body = {"prompt": PROMPT, "target": TARGET, "queries": [UNRELATED], "questions": ["Who was Danielle Darrieux?"]}
    r = client.post("/edits/preview", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    kinds = [(a["kind"], a["text"]) for a in out["answers"]]
    assert kinds == [("prompt", PROMPT), ("query", UNRELATED), ("question", "Who was Danielle Darrieux?")]
    prompt, unrelated = out["answers"][0], out["answers"][1]
    assert prompt["now"] == generate(client, PROMPT, 16)["text"]
    assert prompt["with_edit"].startswith(" " + TARGET) and prompt["changed"]
    assert unrelated["now"] == unrelated["with_edit"] and not unrelated["changed"]
    assert out["affected"] == []

    assert listing(client)["count"] == 1  # nothing stored
    assert {p: generate(client, p) for p in before} == before  # and nothing acts
    assert generate(client, OTHER_PROMPT, 2)["tokens"][0]["edit_id"] == existing["id"]


def test_a_near_duplicate_edit_does_not_take_over_an_active_edit(client):
    existing = create(client)
    before = generate(client, PROMPT, 4)
    # The same words with a trailing space: the scope model's embedding cannot tell them apart, but an
    # edit's own prompt stays its own, so the preview finds no active edit whose answer would change.
    r = client.post("/edits/preview", json={"prompt": PROMPT + " ", "target": "German"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["affected"] == [] and out["answers"][0]["with_edit"].startswith("German")
    assert generate(client, PROMPT, 4) == before and before["tokens"][0]["edit_id"] == existing["id"]


def test_preview_refuses_what_an_insert_would(client):
    create(client)
    assert_error(client.post("/edits/preview", json={"prompt": PROMPT, "target": "German"}), 409, "active")
    assert_error(client.post("/edits/preview", json={"prompt": GOLD, "target": "Au", "queries": [""]}), 422, "queries")
    assert_error(client.post("/edits/preview", json={"prompt": GOLD, "target": "Au", "method": "rome"}), 422)
    assert listing(client)["count"] == 1


def test_the_cli_exports_and_imports_through_a_running_server(live_url, tmp_path, capsys):
    url, _ = live_url
    bundle = tmp_path / "edits.jsonl"
    bundle.write_text(json.dumps({"prompt": PROMPT, "target_new": TARGET, "subject": "Danielle Darrieux"}) + "\n")
    assert edits_cli(["--url", url, "import", str(bundle)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed[0]["result"] == "created" and printed[-1]["summary"]["created"] == 1

    out = tmp_path / "back.jsonl"
    assert edits_cli(["--url", url, "export", "-o", str(out)]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert (line["prompt"], line["target_new"], line["subject"]) == (PROMPT, TARGET, "Danielle Darrieux")
    assert edits_cli(["--url", url, "import", str(bundle)]) == 1  # a conflict now: not all created
    assert edits_cli(["--url", "http://127.0.0.1:9", "export"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_a_large_import_writes_the_start_caches_at_once(client, settings):
    """After an import of many edits the pack holds them all (written in the background, before any
    stop), so a backup taken now, or a start after a crash, reads no blob one by one."""
    import time

    from storage import caches

    body = "\n".join(
        json.dumps({"prompt": f"Import fact {i}: the answer is", "target_new": f"v{i}"}) for i in range(70)
    )
    _, summary = import_(client, body)
    assert summary["created"] == 70
    blobs = {e["id"] for e in export(client)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(caches.read_pack(settings.data_dir)) < 70:
        time.sleep(0.2)
    packed = caches.read_pack(settings.data_dir)
    assert len(packed) == 70 and all(any(name.startswith(i) for name in packed) for i in blobs)
    assert (settings.data_dir / caches.SCOPE_FILE).exists()
