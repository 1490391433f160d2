"""The OpenAI-compatible routes, driven by the official `openai` client over real HTTP (uvicorn on
127.0.0.1), on the tiny model: shapes, streaming, sampling, logprobs, errors, and the edits."""

import httpx
import openai
import pytest

from tests.api.helpers import PROMPT, TARGET, UNRELATED


@pytest.fixture
def served(live_url):
    url, app = live_url
    model = app.state.service.model_id
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120), model, url, app


def native(url: str, **body) -> dict:
    r = httpx.post(f"{url}/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_the_served_model(served):
    client, model, _, _ = served
    assert [m.id for m in client.models.list().data] == [model]
    assert client.models.retrieve(model).owned_by == "editserve"


def test_a_completion_is_the_native_answer_in_openai_shape(served):
    client, model, url, _ = served
    out = client.completions.create(model=model, prompt=UNRELATED, max_tokens=8, temperature=0)
    assert out.object == "text_completion" and out.model == model and out.id.startswith("cmpl-")
    (choice,) = out.choices
    expected = native(url, prompt=UNRELATED, max_new_tokens=8)
    assert choice.text == expected["text"] and choice.finish_reason == expected["finish_reason"]
    assert choice.index == 0 and choice.model_extra["edits"] == []
    assert out.usage.completion_tokens == len(expected["tokens"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens > 8


def test_chat_uses_the_template_and_matches_the_native_chat(served):
    client, model, url, _ = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"}]
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    (choice,) = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == native(url, messages=messages, max_new_tokens=6)["text"]
    developer = [{"role": "developer", "content": "Be brief."}, messages[1]]
    again = client.chat.completions.create(model=model, messages=developer, max_tokens=6, temperature=0)
    assert again.choices[0].message.content == choice.message.content


def test_streams_add_up_to_the_whole_answer(served):
    client, model, _, _ = served
    whole = client.completions.create(model=model, prompt=UNRELATED, max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model=model, prompt=UNRELATED, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])

    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_seeded_sampling_is_reproducible_and_n_choices_differ(served):
    client, model, _, _ = served

    def draw():
        out = client.completions.create(model=model, prompt=UNRELATED, max_tokens=12, temperature=1.5, seed=11, n=3)
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    first = draw()
    assert first == draw() and len(set(first)) > 1


def test_stop_strings_and_logprobs(served):
    client, model, _, _ = served
    whole = client.completions.create(model=model, prompt=UNRELATED, max_tokens=12, temperature=0, logprobs=2)
    text, lp = whole.choices[0].text, whole.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == whole.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) <= 2 for t in lp.top_logprobs)
    stop = text[3:6]
    cut = client.completions.create(model=model, prompt=UNRELATED, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"

    messages = [{"role": "user", "content": "Say something."}]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_each_choice_names_its_edits_and_edits_none_compares(served):
    client, model, url, _ = served
    before = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0).choices[0]
    r = httpx.post(f"{url}/edits", json={"prompt": PROMPT, "target": TARGET}, timeout=120)
    assert r.status_code == 201, r.text
    edit_id = r.json()["id"]

    after = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0).choices[0]
    assert after.text.startswith(" " + TARGET) and after.model_extra["edits"] == [edit_id]
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0, stream=True))
    assert chunks[0].choices[0].model_extra["edits"] == [edit_id]
    plain = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=3, temperature=0, extra_body={"edits": "none"}
    ).choices[0]
    assert plain.text == before.text and plain.model_extra["edits"] == []


@pytest.mark.parametrize(
    "kwargs, status, param",
    [
        ({"model": "gpt-4o"}, 404, None),
        ({"temperature": 7}, 400, "temperature"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"n": 99}, 400, "n"),
        ({"presence_penalty": 1.0}, 400, None),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ],
)
def test_errors_come_as_openai_error_objects(served, kwargs, status, param):
    client, model, _, _ = served
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(**{"model": model, "prompt": UNRELATED, "max_tokens": 4, **kwargs})
    err = caught.value
    assert err.status_code == status
    body = err.body
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert body["param"] == param or param is None
    if status == 404:
        assert body["code"] == "model_not_found" and "gpt-4o" in body["message"]


def test_unknown_v1_routes_and_bad_chats_answer_in_the_same_shape(served):
    client, model, url, _ = served
    r = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "system", "content": "Hi"}])
    assert "user message" in caught.value.body["message"]


def test_a_failure_inside_a_stream_ends_it_with_an_error_event(served, monkeypatch):
    _, model, url, app = served

    def failing(*args, **kwargs):
        yield from ()
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(app.state.service.model, "stream", failing)
    body = {"model": model, "prompt": UNRELATED, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert '"error"' in lines[-2] and "the model fell over" in lines[-2]


def test_the_v1_responses_are_typed_in_the_openapi_schema_and_chunks_follow_theirs(served):
    import json

    from app.openai_protocol import ChatCompletionChunk, CompletionResponse

    _, model, url, _ = served
    spec = httpx.get(f"{url}/openapi.json").json()

    def answer(path: str, verb: str = "post") -> dict:
        return spec["paths"][path][verb]["responses"]["200"]["content"]["application/json"]["schema"]

    assert answer("/v1/completions") == {"$ref": "#/components/schemas/CompletionResponse"}
    assert answer("/v1/chat/completions") == {"$ref": "#/components/schemas/ChatCompletionResponse"}
    assert answer("/v1/models", "get") == {"$ref": "#/components/schemas/ModelList"}
    assert "edits" in spec["components"]["schemas"]["ChatChoice"]["properties"]

    def chunks(path: str, **body) -> list[dict]:
        body = {"model": model, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}, **body}
        with httpx.stream("POST", f"{url}{path}", json=body, timeout=60) as r:
            return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]

    chat = chunks("/v1/chat/completions", messages=[{"role": "user", "content": PROMPT}])
    completion = chunks("/v1/completions", prompt=PROMPT)
    assert len(chat) >= 3 and len(completion) >= 2
    for chunk in chat:
        ChatCompletionChunk.model_validate(chunk)
    for chunk in completion:
        CompletionResponse.model_validate(chunk)
    assert chat[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chat[-1]["choices"] == [] and chat[-1]["usage"]["completion_tokens"] <= 4
    assert chat[-2]["choices"][0]["finish_reason"] in ("stop", "length") and "usage" not in chat[-2]
