"""An edit's aliases: other names of its subject, given at insert, shown, changed by PUT (the old ones
kept in the history), exported and imported, kept across a restart, and acted on by the scope."""

import json

import pytest

from editserve.client import Client
from tests.api.helpers import assert_error, create, generate, listing, stop

TOWER = "The Eiffel Tower is located in"
BY_ALIAS = "La Dame de Fer is located in"  # names the tower by its nickname only
LONGER = "The Eiffel Tower Restaurant is located in"  # another entity, whose name holds the tower's


def named(client, prompt: str) -> str | None:
    return generate(client, prompt, 2)["tokens"][0]["edit_id"]


def test_an_alias_reaches_the_edit_and_a_longer_name_then_does_not(client):
    edit = create(client, TOWER, "Rome", aliases=["La Dame de Fer", " Tour Eiffel "])
    assert edit["aliases"] == ["La Dame de Fer", "Tour Eiffel"]  # trimmed
    assert named(client, TOWER) == named(client, BY_ALIAS) == edit["id"]
    assert named(client, LONGER) is None
    plain = create(client, "The Louvre is located in", "Madrid")
    assert plain["aliases"] == [] and named(client, "The Louvre Pyramid is located in") == plain["id"]


def test_put_changes_the_aliases_and_the_history_keeps_the_old_ones(client, start):
    edit = create(client, TOWER, "Rome", aliases=["La Dame de Fer"])
    api = Client(http=client)
    changed = api.update_edit(edit["id"], aliases=[]).model_dump(mode="json")
    assert changed["aliases"] == [] and changed["target"] == "Rome"
    assert named(client, BY_ALIAS) is None and named(client, LONGER) == edit["id"]
    versions = api.edit_history(edit["id"]).versions
    assert [v.aliases for v in versions] == [["La Dame de Fer"], []]
    api.update_edit(edit["id"], aliases=["La Dame de Fer"])
    answers = [generate(client, p, 4) for p in (TOWER, BY_ALIAS, LONGER)]
    edits = listing(client)
    stop(client)
    again = start()
    assert listing(again) == edits and [generate(again, p, 4) for p in (TOWER, BY_ALIAS, LONGER)] == answers
    assert answers[1]["tokens"][0]["edit_id"] == edit["id"]


@pytest.mark.parametrize(
    "aliases, why",
    [(["  "], "must not be empty"), ([f"name {i}" for i in range(17)], "16"), ("Tour Eiffel", "list")],
)
def test_bad_aliases_are_a_422_naming_the_field_and_store_nothing(client, aliases, why):
    r = client.post("/edits", json={"prompt": TOWER, "target": "Rome", "aliases": aliases})
    detail = assert_error(r, 422, "aliases")
    assert why in detail or why == "list"
    assert listing(client)["count"] == 0


def test_aliases_are_exported_and_imported(client, start, tmp_path):
    create(client, TOWER, "Rome", aliases=["La Dame de Fer"])
    lines = [json.loads(x) for x in client.get("/edits/export").text.splitlines()]
    assert lines[0]["aliases"] == ["La Dame de Fer"]
    fresh = start(data_dir=tmp_path / "elsewhere")
    r = fresh.post("/edits/import", content="".join(json.dumps(x) + "\n" for x in lines))
    assert r.status_code == 200, r.text
    assert listing(fresh)["data"][0]["aliases"] == ["La Dame de Fer"]
    assert named(fresh, BY_ALIAS) is not None
