"""POST /generate: greedy text with, for each token, the edit that produced it."""

import pytest

from tests.api.helpers import OTHER_PROMPT, OTHER_TARGET, PROMPT, TARGET, UNRELATED, assert_error, create, generate


def test_unedited_model_names_no_edit(client):
    r = client.post("/generate", json={"prompt": UNRELATED})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"text", "tokens"}
    assert 1 <= len(out["tokens"]) <= 16  # the default max_new_tokens, less if the model stops
    assert "".join(t["text"] for t in out["tokens"]) == out["text"]
    assert all(t["edit_id"] is None for t in out["tokens"])
    assert generate(client, UNRELATED, 16) == out  # greedy: the same every time


def test_edit_changes_its_prompt_and_names_itself_but_not_others(client):
    unrelated_before = generate(client, UNRELATED, 8)
    edit = create(client)
    other = create(client, OTHER_PROMPT, OTHER_TARGET)

    out = generate(client, PROMPT, 3)
    assert out["text"].startswith(" " + TARGET)
    assert out["tokens"][0] == {"text": " " + TARGET, "edit_id": edit["id"]}
    out = generate(client, OTHER_PROMPT, other["neurons"])
    assert out["text"] == " " + OTHER_TARGET and {t["edit_id"] for t in out["tokens"]} == {other["id"]}
    assert generate(client, UNRELATED, 8) == unrelated_before


def test_max_new_tokens_bounds_the_output(client):
    assert len(generate(client, UNRELATED, 1)["tokens"]) == 1
    assert len(generate(client, UNRELATED, 3)["tokens"]) <= 3


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": UNRELATED, "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": UNRELATED, "max_new_tokens": 513}, "max_new_tokens"),
        ({"prompt": UNRELATED, "max_new_tokens": "lots"}, "max_new_tokens"),
        ({"prompt": UNRELATED, "temperature": 0.7}, "temperature"),
        ({"prompt": UNRELATED, "messages": [{"role": "user", "content": "Hi"}]}, "prompt or messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "user message"),
    ],
)
def test_bad_requests_name_the_field(client, body, field):
    assert_error(client.post("/generate", json=body), 422, field)


def test_malformed_json_is_a_readable_422(client):
    assert_error(
        client.post("/generate", content=b'{"prompt": ', headers={"content-type": "application/json"}),
        422,
        "body",
        "JSON",
    )


def chat(client, question: str, max_new_tokens: int = 8) -> dict:
    r = client.post(
        "/generate", json={"messages": [{"role": "user", "content": question}], "max_new_tokens": max_new_tokens}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_messages_are_answered_through_the_chat_template(client):
    tok = client.app.state.service.backbone.tokenizer
    question = "What is the mother tongue of Danielle Darrieux?"
    out = chat(client, question)
    # the same tokens as the rendered conversation sent as a prompt
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("assistant\n") and out == generate(client, rendered, 8)
    assert all(t["edit_id"] is None for t in out["tokens"])


def test_an_edit_reaches_a_chat_question_about_its_fact_and_names_itself(client):
    edit = create(client)
    other = chat(client, "Photosynthesis turns sunlight into what?")
    # The scope model (the untrained MiniLM here) puts the question in the edit's scope: the edit's
    # neurons write its target at the start of the assistant's answer, each token naming the edit.
    out = chat(client, "What is the mother tongue of Danielle Darrieux?")
    assert out["text"].startswith(" " + TARGET) and out["tokens"][0] == {"text": " " + TARGET, "edit_id": edit["id"]}
    assert chat(client, "Photosynthesis turns sunlight into what?") == other
    client.delete(f"/edits/{edit['id']}")
    assert all(t["edit_id"] is None for t in chat(client, "What is the mother tongue of Danielle Darrieux?")["tokens"])
