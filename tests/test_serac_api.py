"""SERAC through the HTTP API on real SQLite with the real MiniLM embedder (tiny backbone from conftest):
routing names the edit, unrelated prompts are untouched, restarts keep edits, withdrawal removes them."""

from __future__ import annotations

from tests.api.helpers import assert_error, create, generate, listing, stop

EDITS = [
    ("What is the product made by UniFirst?", "unmanned aircraft", "What will be the product of UniFirst?"),
    ("Which family does Epiactis belong to?", "Nymphalidae", "What family is Epiactis a part of?"),
]
UNRELATED = "when was the last time anyone was on the moon"


def owners(out: dict) -> set:
    return {t["edit_id"] for t in out["tokens"]}


def test_serac_edits_route_persist_and_withdraw(start):
    client = start()
    before = {q: generate(client, q) for q in [EDITS[0][0], EDITS[0][2], UNRELATED]}
    made = [create(client, p, t, method="serac") for p, t, _ in EDITS]
    assert [(e["method"], e["neurons"], e["status"]) for e in made] == [("serac", 1, "active")] * 2

    for edit, (p, _, para) in zip(made, EDITS):
        for q in (p, para):
            assert owners(generate(client, q)) == {edit["id"]}, q
    assert generate(client, UNRELATED) == before[UNRELATED]

    stop(client)  # restart on the same data dir: the edits come back from their blobs
    client = start()
    assert client.get("/health").json()["edits_active"] == 2
    for edit, (_, _, para) in zip(made, EDITS):
        assert owners(generate(client, para)) == {edit["id"]}

    r = client.delete(f"/edits/{made[0]['id']}")
    assert r.status_code == 200 and r.json()["status"] == "withdrawn", r.text
    assert generate(client, EDITS[0][0]) == before[EDITS[0][0]]
    assert generate(client, EDITS[0][2]) == before[EDITS[0][2]]
    assert owners(generate(client, EDITS[1][2])) == {made[1]["id"]}
    stop(client)
    client = start()  # withdrawn stays withdrawn
    assert generate(client, EDITS[0][2]) == before[EDITS[0][2]]
    assert listing(client, status="withdrawn")["count"] == 1


def test_serac_update_moves_the_scope(client):
    edit = create(client, *EDITS[0][:2], method="serac")
    r = client.put(
        f"/edits/{edit['id']}", json={"prompt": "Who designed the Eiffel Tower?", "target": "Gustave Flaubert"}
    )
    assert r.status_code == 200, r.text
    assert owners(generate(client, "Who is the designer of the Eiffel Tower?")) == {edit["id"]}
    assert owners(generate(client, EDITS[0][2])) == {None}


def test_serac_rejects_an_empty_or_overlong_target(client):
    assert_error(
        client.post("/edits", json={"prompt": "Who?", "target": "word " * 40, "method": "serac"}), 422, "target"
    )
    assert listing(client)["count"] == 0
