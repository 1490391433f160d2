"""The product scenario on the real packaged model, through `editserve serve` on 127.0.0.1.

Insert a fact, see it answered and traced, see unrelated answers unchanged, restart, withdraw."""

from __future__ import annotations

import pytest

from evaluation.server import Server

PROMPT = "The mother tongue of Danielle Darrieux is"
UNRELATED = [
    "The capital of France is",
    "Water is made of hydrogen and",
    "The first president of the United States was",
]


def answer(server: Server, prompt: str, n: int = 6) -> dict:
    return server.generate(prompt, max_new_tokens=n)


@pytest.mark.integration
def test_edit_answer_restart_withdraw_on_the_packaged_model(tmp_path, editserve_cache, packaged_model_dir):
    env = {"EDITSERVE_TORCH_THREADS": "2", "EDITSERVE_CACHE_DIR": str(editserve_cache)}
    edit_answer_restart_withdraw(Server(tmp_path / "data", env, tmp_path / "server.log"))


@pytest.mark.integration
def test_edit_answer_restart_withdraw_on_gemma3(tmp_path, editserve_cache, gemma3_model_dir):
    """The second packaged backbone (another layout: sliding-window attention, gated MLP, 18 layers)."""
    env = {"EDITSERVE_TORCH_THREADS": "2", "EDITSERVE_CACHE_DIR": str(editserve_cache)}
    env["EDITSERVE_MODEL"] = "packaged:gemma3-270m"
    server = Server(tmp_path / "data", env, tmp_path / "server.log")
    edit_answer_restart_withdraw(server)
    with server:
        assert server.call("GET", "/v1/models")["data"][0]["id"] == "gemma3-270m"


def edit_answer_restart_withdraw(server: Server) -> None:
    with server:
        original = answer(server, PROMPT)
        assert not original["text"].startswith(" English")
        unrelated = {p: answer(server, p)["text"] for p in UNRELATED}

        status, edit = server.request("POST", "/edits", {"prompt": PROMPT, "target": "English"})
        assert status == 201, edit
        assert edit["status"] == "active" and edit["neurons"] >= 1

        edited = answer(server, PROMPT)
        assert edited["text"].startswith(" English")
        assert edited["tokens"][0] == {"text": " English", "edit_id": edit["id"]}
        assert {p: answer(server, p)["text"] for p in UNRELATED} == unrelated
        assert server.call("GET", "/health")["edits_active"] == 1

    with server:  # same data dir, new process
        assert answer(server, PROMPT) == edited
        assert {p: answer(server, p)["text"] for p in UNRELATED} == unrelated
        assert server.call("GET", f"/edits/{edit['id']}")["status"] == "active"
        status, body = server.request("DELETE", f"/edits/{edit['id']}")
        assert status == 200 and body["status"] == "withdrawn"
        restored = answer(server, PROMPT)
        assert restored["text"] == original["text"]
        assert all(t["edit_id"] is None for t in restored["tokens"])
        assert server.call("GET", "/edits")["count"] == 1  # the record stays for audit


@pytest.mark.integration
def test_the_trained_scope_carries_an_edit_to_paraphrases_and_chat_but_not_to_neighbours(
    tmp_path, editserve_cache, packaged_model_dir, trained_scope
):
    env = {"EDITSERVE_TORCH_THREADS": "2", "EDITSERVE_CACHE_DIR": str(editserve_cache)}
    prompt, target = "The Statue of Liberty is located in", "Chicago"
    neighbours = ["The Golden Gate Bridge is located in", "The Statue of Liberty was a gift from"]
    chat = {"messages": [{"role": "user", "content": "In which city is the Statue of Liberty?"}], "max_new_tokens": 8}
    server = Server(tmp_path / "data", env, tmp_path / "server.log")
    with server:
        assert "scope model: trained" in server.log.read_text()  # the start-up lines, before any request
        before = {p: answer(server, p) for p in neighbours}
        edit = server.call("POST", "/edits", {"prompt": prompt, "target": target})
        for query in (prompt, "The Statue of Liberty can be visited in the city of"):
            out = answer(server, query)
            assert target in out["text"] and out["tokens"][0]["edit_id"] == edit["id"], (query, out)
        out = server.call("POST", "/generate", chat)
        assert target in out["text"] and out["tokens"][0]["edit_id"] == edit["id"], out
        assert {p: answer(server, p) for p in neighbours} == before
        # a follow-up that says "it": read with the earlier message that named the subject
        turns = [
            {"role": "user", "content": "Tell me about the Statue of Liberty."},
            {"role": "assistant", "content": "It is a large statue given to the United States by France."},
            {"role": "user", "content": "In which city is it?"},
        ]
        out = server.call("POST", "/generate", {"messages": turns, "max_new_tokens": 8})
        assert target in out["text"] and any(t["edit_id"] == edit["id"] for t in out["tokens"]), out


@pytest.mark.integration
def test_the_openai_client_sees_an_edit_in_a_chat_answer(tmp_path, editserve_cache, packaged_model_dir, trained_scope):
    """The official client against `editserve serve`: a chat question about an edited fact is answered
    with it (streamed and whole), the choice names the edit, and `edits: none` shows the model's own."""
    import openai

    env = {"EDITSERVE_TORCH_THREADS": "2", "EDITSERVE_CACHE_DIR": str(editserve_cache)}
    with Server(tmp_path / "data", env, tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        (model,) = [m.id for m in client.models.list().data]
        question = [{"role": "user", "content": "Where is the Statue of Liberty?"}]

        def ask(**extra):
            return client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0, **extra)

        own = ask().choices[0]
        assert "Chicago" not in own.message.content
        edit = server.call("POST", "/edits", {"prompt": "The Statue of Liberty is located in", "target": "Chicago"})

        edited = ask().choices[0]
        assert "Chicago" in edited.message.content and edited.model_extra["edits"] == [edit["id"]]
        streamed = list(ask(stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == edited.message.content
        assert ask(extra_body={"edits": "none"}).choices[0].message.content == own.message.content
