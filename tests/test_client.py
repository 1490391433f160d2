"""editserve.client, sync and async, against a real uvicorn on 127.0.0.1: every verb, streaming, bundles,
the key, and errors raised with the server's status and message."""

import asyncio

import pytest

from editserve.client import AsyncClient, Client, EditServeError
from tests.api.helpers import GOLD, OTHER_PROMPT, PROMPT, TARGET, UNRELATED

KEY = "k" * 24


def test_the_sync_client_makes_reads_changes_and_withdraws_an_edit(live_url):
    url, _ = live_url
    with Client(url) as es:
        assert es.ready().status == "ok"
        before = es.generate(PROMPT, max_new_tokens=3)
        edit = es.create_edit(PROMPT, TARGET, subject="Danielle Darrieux")
        assert (edit.status, edit.subject, edit.method) == ("active", "Danielle Darrieux", "ireva")
        assert es.get_edit(edit.id) == edit
        assert [e.id for e in es.list_edits(q="darrieux").data] == [edit.id]

        answer = es.generate(PROMPT, max_new_tokens=3)
        assert answer.text.lstrip().startswith(TARGET) and answer.tokens[0].edit_id == edit.id
        assert es.generate(PROMPT, max_new_tokens=3, edits="none") == before
        assert es.generate(UNRELATED, max_new_tokens=3).tokens[0].edit_id is None

        changed = es.update_edit(edit.id, target="German")
        assert changed.target == "German" and es.generate(PROMPT, max_new_tokens=2).text.lstrip().startswith("German")
        assert [v.target for v in es.edit_history(edit.id).versions] == [TARGET, "German"]

        preview = es.preview_edit(GOLD, "Au", queries=[UNRELATED])
        assert preview.answers[0].with_edit.lstrip().startswith("Au") and preview.answers[0].changed
        assert es.list_edits().count == 1  # the preview stored nothing

        withdrawn = es.withdraw_edit(edit.id)
        assert withdrawn.status == "withdrawn" and withdrawn.withdrawn_at is not None
        assert es.generate(PROMPT, max_new_tokens=3) == before
        assert es.health().edits_active == 0


def test_the_stream_yields_the_tokens_of_the_same_answer_then_its_end(live_url):
    url, _ = live_url
    with Client(url) as es:
        edit = es.create_edit(PROMPT, TARGET)
        whole = es.generate(PROMPT, max_new_tokens=5)
        *tokens, end = list(es.stream_generate(PROMPT, max_new_tokens=5))
        assert [(t.text, t.edit_id) for t in tokens] == [(t.text, t.edit_id) for t in whole.tokens]
        assert (end.text, end.finish_reason) == (whole.text, whole.finish_reason)
        assert tokens[0].edit_id == edit.id
        chat = list(es.stream_generate(messages=[{"role": "user", "content": "Say hello."}], max_new_tokens=3))
        assert chat[-1].finish_reason in ("stop", "length") and chat[-1].text == "".join(t.text for t in chat[:-1])


def test_errors_carry_the_servers_status_and_message_and_change_nothing(live_url):
    url, _ = live_url
    with Client(url) as es:
        edit = es.create_edit(PROMPT, TARGET)
        with pytest.raises(EditServeError) as missing:
            es.get_edit("no-such-edit")
        assert missing.value.status == 404 and "no-such-edit" in missing.value.message
        with pytest.raises(EditServeError) as conflict:
            es.create_edit(PROMPT, "German")
        assert conflict.value.status == 409 and "active" in conflict.value.message
        with pytest.raises(EditServeError) as invalid:
            es.generate(PROMPT, max_new_tokens=0)
        assert invalid.value.status == 422 and "max_new_tokens" in invalid.value.message
        with pytest.raises(EditServeError) as stream_invalid:
            list(es.stream_generate(PROMPT, temperature=9))
        assert stream_invalid.value.status == 422 and "temperature" in stream_invalid.value.message
        assert [e.id for e in es.list_edits().data] == [edit.id] and es.get_edit(edit.id).target == TARGET
    with Client("http://127.0.0.1:9") as nowhere, pytest.raises(Exception) as unreachable:
        nowhere.health()
    assert "connect" in type(unreachable.value).__name__.lower()


def test_a_bundle_exported_by_the_client_imports_into_an_empty_server_with_the_same_answers(live_url_factory, tmp_path):
    source_url, _ = live_url_factory()
    empty_url, _ = live_url_factory(data_dir=tmp_path / "empty")
    with Client(source_url) as source, Client(empty_url) as empty:
        kept = source.create_edit(PROMPT, TARGET)
        source.withdraw_edit(source.create_edit(OTHER_PROMPT, "Sydney").id)
        bundle = list(source.export_edits())
        assert [(x["prompt"], x["status"]) for x in bundle] == [(PROMPT, "active"), (OTHER_PROMPT, "withdrawn")]
        assert bundle[0]["id"] == kept.id and bundle[0]["target_new"] == TARGET

        *results, summary = list(empty.import_edits(bundle))
        assert [r["result"] for r in results] == ["created", "created"]
        assert summary["summary"]["created"] == 2
        for prompt in (PROMPT, OTHER_PROMPT, UNRELATED):  # the same text, edited at the same tokens (new ids)
            there, here = source.generate(prompt, max_new_tokens=3), empty.generate(prompt, max_new_tokens=3)
            assert here.text == there.text, prompt
            assert [t.edit_id is None for t in here.tokens] == [t.edit_id is None for t in there.tokens], prompt
        assert [r["result"] for r in empty.import_edits(bundle[:1]) if "result" in r] == ["conflict"]


def test_the_async_client_does_the_same_over_the_same_api(live_url):
    url, _ = live_url

    async def use() -> tuple:
        async with AsyncClient(url) as es:
            edit = await es.create_edit(PROMPT, TARGET)
            answer = await es.generate(PROMPT, max_new_tokens=3)
            streamed = [item async for item in es.stream_generate(PROMPT, max_new_tokens=3)]
            exported = [line async for line in es.export_edits(status="active")]
            with pytest.raises(EditServeError) as missing:
                await es.withdraw_edit("no-such-edit")
            withdrawn = await es.withdraw_edit(edit.id)
            return edit, answer, streamed, exported, missing.value, withdrawn, await es.list_edits(status="active")

    edit, answer, streamed, exported, missing, withdrawn, active = asyncio.run(use())
    assert answer.text.lstrip().startswith(TARGET) and answer.tokens[0].edit_id == edit.id
    assert streamed[-1].text == answer.text and [t.edit_id for t in streamed[:-1]] == [t.edit_id for t in answer.tokens]
    assert [line["id"] for line in exported] == [edit.id]
    assert missing.status == 404 and withdrawn.status == "withdrawn" and active.count == 0


def test_the_key_comes_from_the_argument_or_the_environment(live_url_factory, monkeypatch):
    url, _ = live_url_factory(api_keys=f"alice:edit:{KEY}")
    with Client(url) as anonymous, pytest.raises(EditServeError) as refused:
        anonymous.list_edits()
    assert refused.value.status == 401 and "API key" in refused.value.message
    with Client(url, api_key=KEY) as alice:
        assert alice.create_edit(PROMPT, TARGET).created_by == "alice"
    monkeypatch.setenv("EDITSERVE_API_KEY", KEY)
    with Client(url) as from_env:
        assert from_env.list_edits().data[0].created_by == "alice"
