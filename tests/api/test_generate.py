"""POST /generate: text with, for each token, the edit that produced it; sampling, stop strings,
streaming and the unedited comparison."""

import json

import pytest

from tests.api.helpers import OTHER_PROMPT, OTHER_TARGET, PROMPT, TARGET, UNRELATED, assert_error, create, generate


def test_unedited_model_names_no_edit(client):
    r = client.post("/generate", json={"prompt": UNRELATED})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"text", "tokens", "finish_reason"}
    assert out["finish_reason"] in ("stop", "length")
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
        ({"prompt": UNRELATED, "temperature": 2.5}, "temperature"),
        ({"prompt": UNRELATED, "top_p": 0}, "top_p"),
        ({"prompt": UNRELATED, "stop": ""}, "stop"),
        ({"prompt": UNRELATED, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": UNRELATED, "edits": "some"}, "edits"),
        ({"prompt": UNRELATED, "stream": "yes please"}, "stream"),
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
    # The scope model (the untrained MiniLM here) puts the question in the edit's scope: the answer
    # opens with the edit stated, its prompt completed by its target, each token naming the edit, and
    # goes on in the model's own words.
    stated = f"{PROMPT} {TARGET}"  # left open: the model ends the sentence
    out = chat(client, "What is the mother tongue of Danielle Darrieux?", 24)
    assert out["text"].startswith(stated) and len(out["text"]) > len(stated), out["text"]
    texts = [t["text"] for t in out["tokens"]]
    opening = next(i for i in range(len(texts) + 1) if "".join(texts[:i]) == stated)  # a token ends it
    assert all(t["edit_id"] == edit["id"] for t in out["tokens"][:opening])
    # a yes/no question gets its verdict for the edited fact first
    said = chat(client, "Is English the mother tongue of Danielle Darrieux?", 16)["text"]
    assert said.startswith("Yes. " + stated), said
    assert chat(client, "Is French the mother tongue of Danielle Darrieux?", 16)["text"].startswith("No. " + stated)
    assert chat(client, "Photosynthesis turns sunlight into what?") == other
    client.delete(f"/edits/{edit['id']}")
    assert all(t["edit_id"] is None for t in chat(client, "What is the mother tongue of Danielle Darrieux?")["tokens"])


def test_a_two_word_target_asked_in_chat_is_stated_whole(client):
    """A person's name as the target: the whole name, not its first token and then another name."""
    edit = create(client, "The chief executive of Apple is", "Elon Musk")
    said = chat(client, "Who is the chief executive of Apple?", 24)["text"]
    assert "Elon Musk" in said and "Tim Cook" not in said, said
    client.delete(f"/edits/{edit['id']}")


def _post(client, **body) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_sampling_follows_its_seed_and_greedy_stays_the_default(client):
    greedy = _post(client, prompt=UNRELATED, max_new_tokens=12)
    assert _post(client, prompt=UNRELATED, max_new_tokens=12, temperature=0) == greedy
    draws = [_post(client, prompt=UNRELATED, max_new_tokens=12, temperature=1.5, seed=s)["text"] for s in range(4)]
    assert draws != [greedy["text"]] * 4  # a random tiny model at temperature 1.5 is not greedy
    again = [_post(client, prompt=UNRELATED, max_new_tokens=12, temperature=1.5, seed=s)["text"] for s in range(4)]
    assert again == draws
    # a temperature this small overflows the softmax: its limit, greedy (the fuzz found a 500 here)
    assert _post(client, prompt=UNRELATED, max_new_tokens=12, temperature=1e-300, seed=1) == greedy
    # top_p this small keeps only the most likely token: greedy again
    assert _post(client, prompt=UNRELATED, max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=3) == greedy
    # the largest 64-bit seeds are taken; beyond them, a 422 naming the field (the fuzz found a 500 here)
    for seed in (2**63 - 1, -(2**63)):
        assert _post(client, prompt=UNRELATED, max_new_tokens=2, temperature=1.5, seed=seed)["text"]
    r = client.post("/generate", json={"prompt": UNRELATED, "temperature": 1.5, "seed": 2**64})
    assert r.status_code == 422 and "seed" in r.text


def test_a_stop_string_ends_the_answer_before_it(client):
    whole = _post(client, prompt=UNRELATED, max_new_tokens=16)
    assert whole["finish_reason"] == "length" and len(whole["text"]) > 6
    stop = whole["text"][4:7]
    cut = _post(client, prompt=UNRELATED, max_new_tokens=16, stop=["never there", stop])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == whole["text"][: whole["text"].index(stop)]
    assert "".join(t["text"] for t in cut["tokens"]) == cut["text"]


def _events(response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [c for c in response.text.split("\n\n") if c]
    assert chunks[-1] == "data: [DONE]" and all(c.startswith("data: ") for c in chunks)
    return [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]


def test_a_stream_sends_each_token_with_its_edit_then_the_end(client):
    edit = create(client)
    for prompt in (PROMPT, UNRELATED):
        whole = _post(client, prompt=prompt, max_new_tokens=6)
        events = _events(client.post("/generate", json={"prompt": prompt, "max_new_tokens": 6, "stream": True}))
        tokens, end = events[:-1], events[-1]
        assert [{"text": t["text"], "edit_id": t["edit_id"]} for t in whole["tokens"]] == tokens
        assert end == {"finish_reason": whole["finish_reason"], "text": whole["text"]}
    assert (
        tokens[0]["edit_id"] is None
        and _events(client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2, "stream": True}))[0][
            "edit_id"
        ]
        == edit["id"]
    )


def test_edits_none_answers_as_the_unedited_model(client):
    before = _post(client, prompt=PROMPT, max_new_tokens=4)
    create(client)
    assert _post(client, prompt=PROMPT, max_new_tokens=4)["text"].startswith(" " + TARGET)
    assert _post(client, prompt=PROMPT, max_new_tokens=4, edits="none") == before


def test_a_failure_inside_a_stream_is_reported_in_it(client, monkeypatch):
    service = client.app.state.service

    def failing(*args, **kwargs):
        yield from ()
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(service.model, "stream", failing)
    events = _events(client.post("/generate", json={"prompt": UNRELATED, "stream": True}))
    assert events == [
        {"error": {"message": "generation failed: RuntimeError: the model fell over", "type": "server_error"}}
    ]
    monkeypatch.undo()
    assert _post(client, prompt=UNRELATED)["text"]  # the server goes on answering
