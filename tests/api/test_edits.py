"""POST/GET/PUT/DELETE /edits over a real SQLite file, including failures, restarts and damaged blobs."""

import logging
import sqlite3
from datetime import datetime

import pytest
import torch
from safetensors.torch import save_file

from app.services import startup
from editors.ireva.config import IrevaConfig
from storage.blobs import BlobStore
from storage.repository import PACK_FILE
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
    stop,
)


def test_create_returns_the_active_edit_and_the_model_answers_with_it(client):
    before = generate(client, PROMPT)
    assert not before["text"].startswith(" " + TARGET)

    r = client.post("/edits", json={"prompt": PROMPT, "target": TARGET})
    assert r.status_code == 201, r.text
    edit = r.json()
    assert {"id", "method", "prompt", "target", "status", "neurons", "created_at", "updated_at"} <= set(edit)
    assert (edit["method"], edit["prompt"], edit["target"], edit["status"]) == ("ireva", PROMPT, TARGET, "active")
    assert edit["neurons"] == 1  # " English" is one token: one neuron per target token
    assert edit["created_at"] == edit["updated_at"] and edit["withdrawn_at"] is None
    assert datetime.fromisoformat(edit["created_at"]).tzinfo is not None

    after = generate(client, PROMPT)
    assert after["text"].startswith(" " + TARGET)
    assert after["tokens"][0] == {"text": " " + TARGET, "edit_id": edit["id"]}


def test_multi_token_target_gets_one_neuron_per_token(client):
    edit = create(client, OTHER_PROMPT, OTHER_TARGET)
    assert edit["neurons"] == len(client.app.state.service.backbone.tokenizer(" " + OTHER_TARGET)["input_ids"])
    out = generate(client, OTHER_PROMPT, max_new_tokens=edit["neurons"])
    assert out["text"] == " " + OTHER_TARGET
    assert all(t["edit_id"] == edit["id"] for t in out["tokens"])


@pytest.mark.parametrize(
    "body, field",
    [
        ({"target": TARGET}, "prompt"),
        ({"prompt": "", "target": TARGET}, "prompt"),
        ({"prompt": "   ", "target": TARGET}, "prompt"),
        ({"prompt": PROMPT}, "target"),
        ({"prompt": PROMPT, "target": ""}, "target"),
        ({"prompt": PROMPT, "target": " \n"}, "target"),
        ({"prompt": PROMPT, "target": TARGET, "method": "rome"}, "method"),
        ({"prompt": PROMPT, "target": TARGET, "targte": "typo"}, "targte"),
        ({"prompt": 3, "target": TARGET}, "prompt"),
    ],
)
def test_create_rejects_bad_input_naming_the_field(client, blob_dir, body, field):
    blobs = sorted(blob_dir.iterdir())
    assert_error(client.post("/edits", json=body), 422, field)
    assert listing(client)["count"] == 0
    assert sorted(blob_dir.iterdir()) == blobs


def test_target_over_the_token_cap_is_rejected_and_leaves_nothing(start, blob_dir):
    client = start(ireva=IrevaConfig(max_target_tokens=3))
    blobs = sorted(blob_dir.iterdir())
    before = generate(client, PROMPT)
    assert_error(client.post("/edits", json={"prompt": PROMPT, "target": "one two three four"}), 422, "target", "cap")
    assert listing(client)["count"] == 0
    assert sorted(blob_dir.iterdir()) == blobs
    assert generate(client, PROMPT) == before
    assert client.get("/health").json()["edits_active"] == 0


def test_retrofit_is_applied_by_ireva_and_refused_naming_the_field_by_serac(client):
    r = client.post("/edits", json={"prompt": PROMPT, "target": TARGET, "retrofit": True})
    assert r.status_code == 201 and r.json()["retrofit"] is True, r.text
    serac = {"prompt": OTHER_PROMPT, "target": OTHER_TARGET, "retrofit": True, "method": "serac"}
    assert_error(client.post("/edits", json=serac), 422, "retrofit", "serac")
    assert listing(client)["count"] == 1


def test_same_prompt_as_an_active_edit_is_a_conflict_naming_it(client):
    first = create(client)
    detail = assert_error(client.post("/edits", json={"prompt": PROMPT, "target": "French"}), 409, first["id"], "PUT")
    assert "prompt" in detail
    assert listing(client)["count"] == 1
    # once withdrawn, the prompt is free again
    client.delete(f"/edits/{first['id']}")
    second = create(client, PROMPT, "French")
    assert generate(client, PROMPT)["tokens"][0]["edit_id"] == second["id"]


def test_list_filters_and_pages(client):
    ids = [create(client, f"Fact number {i} says the answer is", f"answer{i}")["id"] for i in range(4)]
    client.delete(f"/edits/{ids[1]}")

    everything = listing(client)
    assert everything["count"] == 4 and [e["id"] for e in everything["data"]] == ids  # oldest first
    active = listing(client, status="active")
    assert active["count"] == 3 and {e["id"] for e in active["data"]} == {ids[0], ids[2], ids[3]}
    assert [e["id"] for e in listing(client, status="withdrawn")["data"]] == [ids[1]]
    assert listing(client, status="corrupt") == {"data": [], "count": 0}
    page = listing(client, limit=2, offset=1)
    assert page["count"] == 4 and [e["id"] for e in page["data"]] == ids[1:3]
    assert listing(client, offset=10) == {"data": [], "count": 4}


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=gone", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("limit=many", "limit"),
    ],
)
def test_list_rejects_bad_query_naming_it(client, query, field):
    assert_error(client.get(f"/edits?{query}"), 422, field)


def test_get_one_edit_or_404(client):
    edit = create(client)
    assert client.get(f"/edits/{edit['id']}").json() == edit
    assert_error(client.get("/edits/00000000-0000-0000-0000-000000000000"), 404, "not found")


def test_put_retrains_the_edit(client, blob_dir):
    edit = create(client)
    old_blobs = sorted(blob_dir.iterdir())
    r = client.put(f"/edits/{edit['id']}", json={"target": "Spanish and Basque"})
    assert r.status_code == 200, r.text
    new = r.json()
    assert (new["id"], new["prompt"], new["target"], new["status"]) == (
        edit["id"],
        PROMPT,
        "Spanish and Basque",
        "active",
    )
    assert new["neurons"] == 3 and new["created_at"] == edit["created_at"] and new["updated_at"] > edit["updated_at"]
    out = generate(client, PROMPT, max_new_tokens=3)
    assert out["text"] == " Spanish and Basque" and {t["edit_id"] for t in out["tokens"]} == {edit["id"]}
    assert len(list(blob_dir.iterdir())) == len(old_blobs)  # the new blob replaced the old one

    # a new prompt moves the edit: the old prompt answers as before the edit
    baseline_other = generate(client, OTHER_PROMPT)
    moved = client.put(f"/edits/{edit['id']}", json={"prompt": OTHER_PROMPT}).json()
    assert (moved["prompt"], moved["target"]) == (OTHER_PROMPT, "Spanish and Basque")
    assert generate(client, OTHER_PROMPT, 3)["text"] == " Spanish and Basque"
    assert generate(client, OTHER_PROMPT) != baseline_other
    assert generate(client, PROMPT)["tokens"][0]["edit_id"] is None


def test_put_errors(client):
    edit = create(client)
    other = create(client, OTHER_PROMPT, OTHER_TARGET)
    url = f"/edits/{edit['id']}"
    assert_error(client.put("/edits/00000000-0000-0000-0000-000000000000", json={"target": "x"}), 404, "not found")
    assert_error(client.put(url, json={}), 422, "prompt", "target")
    assert_error(client.put(url, json={"target": ""}), 422, "target")
    assert_error(client.put(url, json={"prompt": "  "}), 422, "prompt")
    assert_error(client.put(url, json={"prompt": OTHER_PROMPT}), 409, other["id"])
    assert client.get(url).json() == edit  # nothing changed by the failed requests
    client.delete(url)
    assert_error(client.put(url, json={"target": "French"}), 409, "withdrawn")


def test_put_over_the_cap_keeps_the_old_edit(start):
    client = start(ireva=IrevaConfig(max_target_tokens=3))
    edit = create(client)
    before = generate(client, PROMPT)
    assert_error(client.put(f"/edits/{edit['id']}", json={"target": "one two three four"}), 422, "target")
    assert client.get(f"/edits/{edit['id']}").json() == edit
    assert generate(client, PROMPT) == before


def test_delete_withdraws_but_keeps_the_record(client):
    baseline = generate(client, PROMPT)
    edit = create(client)
    assert generate(client, PROMPT) != baseline

    r = client.delete(f"/edits/{edit['id']}")
    assert r.status_code == 200, r.text
    gone = r.json()
    assert gone["status"] == "withdrawn" and gone["withdrawn_at"] is not None and gone["target"] == TARGET
    assert client.get(f"/edits/{edit['id']}").json() == gone
    assert generate(client, PROMPT) == baseline  # the original answer returns
    assert client.get("/health").json()["edits_active"] == 0

    assert_error(client.delete(f"/edits/{edit['id']}"), 409, "already withdrawn")
    assert_error(client.delete("/edits/00000000-0000-0000-0000-000000000000"), 404, "not found")


def test_withdrawing_one_edit_leaves_the_others(client):
    a = create(client)
    b = create(client, OTHER_PROMPT, OTHER_TARGET)
    client.delete(f"/edits/{a['id']}")
    assert generate(client, OTHER_PROMPT, 2)["tokens"][0]["edit_id"] == b["id"]


# -- a failing store changes nothing ---------------------------------------------------------------------
def test_failed_insert_commit_leaves_no_row_blob_or_neuron(client, blob_dir, fail_writes):
    baseline = generate(client, PROMPT)
    blobs = sorted(blob_dir.iterdir())
    fail_writes("INSERT")
    assert_error(client.post("/edits", json={"prompt": PROMPT, "target": TARGET}), 500, "not applied")
    assert listing(client)["count"] == 0
    assert sorted(blob_dir.iterdir()) == blobs
    assert generate(client, PROMPT) == baseline
    assert client.get("/health").json()["edits_active"] == 0


def test_failed_update_or_withdraw_commit_keeps_the_edit_as_it_was(client, blob_dir, fail_writes, start):
    edit = create(client)
    edited = generate(client, PROMPT)
    blobs = sorted(blob_dir.iterdir())
    allow = fail_writes("UPDATE")
    assert_error(client.put(f"/edits/{edit['id']}", json={"target": "French"}), 500, "not applied")
    assert_error(client.delete(f"/edits/{edit['id']}"), 500, "not applied")
    assert client.get(f"/edits/{edit['id']}").json() == edit
    assert sorted(blob_dir.iterdir()) == blobs
    assert generate(client, PROMPT) == edited
    allow()
    # and the store still holds the edit as it was: a restart answers the same
    stop(client)
    assert generate(start(), PROMPT) == edited


# -- restarts ----------------------------------------------------------------------------------------------
def test_restart_restores_every_answer_and_the_edit_list(client, start):
    kept = create(client)
    changed = create(client, OTHER_PROMPT, "Sydney")
    gone = create(client, GOLD, "Au")
    client.put(f"/edits/{changed['id']}", json={"target": OTHER_TARGET})
    client.delete(f"/edits/{gone['id']}")
    prompts = [PROMPT, OTHER_PROMPT, GOLD, UNRELATED]
    answers = [generate(client, p, 8) for p in prompts]
    edits = listing(client)
    stop(client)

    again = start()
    assert listing(again) == edits
    assert [generate(again, p, 8) for p in prompts] == answers
    assert again.get("/health").json()["edits_active"] == 2
    assert answers[0]["tokens"][0]["edit_id"] == kept["id"]


def test_restart_reads_the_pack_and_each_blob_the_pack_does_not_hold(client, start, settings, monkeypatch):
    reads = []
    real_read = BlobStore.read

    def counting_read(self, name):
        if not name.startswith("state-"):  # the editor's own state is one blob, read at every start
            reads.append(name)
        return real_read(self, name)

    monkeypatch.setattr(BlobStore, "read", counting_read)
    monkeypatch.setattr(startup, "PACK_AFTER_MISSES", 1)  # the first stop writes a pack
    kept = create(client)
    changed = create(client, OTHER_PROMPT, "Sydney")
    gone = create(client, GOLD, "Au")
    client.delete(f"/edits/{gone['id']}")
    stop(client)
    pack = settings.data_dir / PACK_FILE
    assert pack.exists()

    monkeypatch.setattr(startup, "PACK_AFTER_MISSES", 10**6)  # from now on no pack is written
    reads.clear()
    second = start()
    assert reads == []  # both active edits came from the pack (a withdrawn one needs its prompt only)
    second.put(f"/edits/{changed['id']}", json={"target": OTHER_TARGET})
    prompts = [PROMPT, OTHER_PROMPT, GOLD, UNRELATED]
    answers = [generate(second, p, 8) for p in prompts]
    assert answers[2]["tokens"][0]["edit_id"] is None
    stop(second)

    reads.clear()
    third = start()
    assert len(reads) == 1  # only the retrained edit's new blob
    assert [generate(third, p, 8) for p in prompts] == answers
    stop(third)

    blob_of_first = _blob_of(settings.data_dir / "blobs", kept["id"])
    (settings.data_dir / "blobs" / blob_of_first).rename(settings.data_dir / blob_of_first)
    missing = start()  # the pack still holds it, but a missing blob is a corrupt edit all the same
    assert missing.get(f"/edits/{kept['id']}").json()["status"] == "corrupt"
    stop(missing)
    (settings.data_dir / blob_of_first).rename(settings.data_dir / "blobs" / blob_of_first)
    fix = sqlite3.connect(settings.data_dir / "editserve.db")
    with fix:
        fix.execute("UPDATE edits SET status = 'active', error = NULL WHERE id = ?", (kept["id"],))
    fix.close()

    pack.write_bytes(b"torn")  # a damaged pack costs time, not edits
    reads.clear()
    fourth = start()
    assert len(reads) == 2  # the active edits' blobs
    assert [generate(fourth, p, 8) for p in prompts] == answers


def test_a_new_edit_on_a_withdrawn_prompt_acts_before_and_after_restart(client, start):
    # A retrofitted key is not the prompt's own input, which the withdrawn key is: the withdrawn key
    # must go, or it would win the prompt and silence the new edit.
    prompt = "The capital of France is"
    first = create(client, prompt, "Lyon")
    client.delete(f"/edits/{first['id']}")
    second = create(client, prompt, "Berlin", retrofit=True)
    assert generate(client, prompt)["tokens"][0]["edit_id"] == second["id"]
    client.delete(f"/edits/{second['id']}")
    third = create(client, prompt, "Rome")
    answer = generate(client, prompt)
    assert answer["tokens"][0]["edit_id"] == third["id"]
    stop(client)
    again = start()
    assert generate(again, prompt) == answer
    again.delete(f"/edits/{third['id']}")
    withdrawn = generate(again, prompt)
    assert withdrawn["tokens"][0]["edit_id"] is None
    stop(again)
    assert generate(start(), prompt) == withdrawn


def test_a_start_shadows_only_the_newest_withdrawn_edit_of_a_prompt_no_live_edit_has(settings):
    from editors.edited import EditedModel
    from editors.scope.index import ScopeIndex
    from editors.scope.model import ScopeModel

    model = EditedModel(None, {}, ScopeIndex(ScopeModel.load(settings.scope, None)))
    withdrawn = [("a", "ireva", "p"), ("c", "ireva", "p"), ("b", "serac", "p"), ("d", "ireva", "q")]  # oldest first
    assert model.load([("e", "ireva", "q", "t", {}, None)], withdrawn) == ({}, 2)  # no "ireva" editor: nothing to load
    assert {e.edit_id: e.live for e in model.scope.rows if e is not None} == {"b": False, "e": True}


def test_damaged_blobs_mark_their_edits_corrupt_and_put_rebuilds_them(client, start, blob_dir, caplog):
    missing = create(client)
    garbled = create(client, OTHER_PROMPT, OTHER_TARGET)
    healthy = create(client, GOLD, "Au")
    stop(client)
    (blob_dir / _blob_of(blob_dir, missing["id"])).unlink()
    (blob_dir / _blob_of(blob_dir, garbled["id"])).write_bytes(b"not a safetensors file")

    with caplog.at_level(logging.ERROR, logger="app.services.startup"):
        again = start()
    logged = caplog.text
    assert missing["id"] in logged and garbled["id"] in logged and healthy["id"] not in logged

    corrupt = listing(again, status="corrupt")
    assert corrupt["count"] == 2
    errors = {e["id"]: e["error"] for e in corrupt["data"]}
    assert "missing" in errors[missing["id"]] and "unreadable" in errors[garbled["id"]]
    assert again.get(f"/edits/{healthy['id']}").json()["status"] == "active"
    assert again.get("/health").json()["edits_active"] == 1
    assert generate(again, PROMPT)["tokens"][0]["edit_id"] is None
    assert generate(again, GOLD)["tokens"][0]["edit_id"] == healthy["id"]

    # PUT rebuilds a corrupt edit from its record
    rebuilt = again.put(f"/edits/{missing['id']}", json={"target": TARGET})
    assert rebuilt.status_code == 200 and rebuilt.json()["status"] == "active" and rebuilt.json()["error"] is None
    assert generate(again, PROMPT)["tokens"][0]["edit_id"] == missing["id"]
    # and a corrupt edit can be withdrawn
    assert again.delete(f"/edits/{garbled['id']}").json()["status"] == "withdrawn"


def test_a_blob_of_the_wrong_shape_marks_only_its_edit_corrupt(client, start, blob_dir):
    wrong = create(client)
    fine = create(client, GOLD, "Au")
    stop(client)
    save_file({"keys": torch.ones(1, 3), "values": torch.ones(1, 3)}, blob_dir / _blob_of(blob_dir, wrong["id"]))
    again = start()
    error = again.get(f"/edits/{wrong['id']}").json()
    assert error["status"] == "corrupt" and "shape" in error["error"]
    assert generate(again, GOLD)["tokens"][0]["edit_id"] == fine["id"]
    assert generate(again, PROMPT)["tokens"][0]["edit_id"] is None


def test_orphan_blobs_are_removed_at_start(client, start, blob_dir):
    edit = create(client)
    stop(client)
    kept = sorted(p.name for p in blob_dir.iterdir())
    (blob_dir / "0d5e2c1a-orphan.1234abcd.safetensors").write_bytes(b"left by a crash")
    (blob_dir / f"{_blob_of(blob_dir, edit['id'])}.tmp").write_bytes(b"half written")
    again = start()
    assert sorted(p.name for p in blob_dir.iterdir()) == kept
    assert generate(again, PROMPT)["tokens"][0]["edit_id"] == edit["id"]


def test_data_dir_of_another_layer_is_refused_while_it_holds_edits(client, start):
    create(client)
    stop(client)
    with pytest.raises(RuntimeError, match="would not fit"):
        start(ireva=IrevaConfig(layer=0))
    assert listing(start())["count"] == 1  # and nothing was lost


def _blob_of(blob_dir, edit_id: str) -> str:
    (name,) = [p.name for p in blob_dir.iterdir() if p.name.startswith(edit_id)]
    return name


def test_a_restart_reuses_the_saved_scope_vectors_of_the_same_scope_model(client, start, settings, monkeypatch):
    from editors.scope.model import ScopeModel
    from storage.repository import SCOPE_FILE

    embedded = []
    real_embed = ScopeModel.embed
    monkeypatch.setattr(
        ScopeModel, "embed", lambda self, texts, **kw: embedded.extend(texts) or real_embed(self, texts, **kw)
    )
    monkeypatch.setattr(startup, "PACK_AFTER_MISSES", 1)  # the first stop saves the pack and the vectors
    made = [create(client), create(client, OTHER_PROMPT, OTHER_TARGET)]
    answers = [generate(client, p) for p in (PROMPT, OTHER_PROMPT, UNRELATED)]
    stop(client)
    assert (settings.data_dir / SCOPE_FILE).exists()
    embedded.clear()
    again = start()
    assert embedded == []  # the start embedded no edit prompt
    assert [generate(again, p) for p in (PROMPT, OTHER_PROMPT, UNRELATED)] == answers
    stop(again)
    (settings.data_dir / SCOPE_FILE).write_bytes(b"torn")  # a cache: damage costs time, not answers
    embedded.clear()
    third = start()
    assert (
        sorted(embedded) == sorted([PROMPT, OTHER_PROMPT])
        and [generate(third, p) for p in (PROMPT, OTHER_PROMPT, UNRELATED)] == answers
    )
    assert {e["id"] for e in listing(third, status="active")["data"]} == {e["id"] for e in made}


def test_listing_searches_prompt_target_and_subject_in_any_case(client):
    create(client, subject="Danielle Darrieux")
    create(client, OTHER_PROMPT, OTHER_TARGET)
    assert [e["prompt"] for e in listing(client, q="DARRIEUX")["data"]] == [PROMPT]
    assert [e["prompt"] for e in listing(client, q="canberra")["data"]] == [OTHER_PROMPT]
    assert listing(client, q="100%_")["count"] == 0  # LIKE wildcards are plain characters here
    assert listing(client, q="a")["count"] == 2
