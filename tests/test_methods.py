"""Every registered method keeps the same contract through the server (insert, answer, restart,
withdraw, restart), and a new method needs one package and one registration (tests/toy_method)."""

import pytest

from app.core.config import with_methods
from app.main import create_app
from editors import registry
from editors.scope.config import ScopeConfig
from tests.api.helpers import PROMPT, UNRELATED, create, generate, stop, wait_ready
from tests.toy_method.config import ToyConfig
from tests.toy_method.method import TOY


def owners(answer: dict) -> set:
    return {t["edit_id"] for t in answer["tokens"]}


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_method_inserts_answers_restarts_and_withdraws(start, method):
    client = start()
    before, unrelated = generate(client, PROMPT), generate(client, UNRELATED)
    edit = create(client, method=method)
    assert edit["method"] == method and edit["status"] == "active"
    after = generate(client, PROMPT)
    assert edit["id"] in owners(after)  # the edit made (some of) this answer, and says so
    assert generate(client, UNRELATED) == unrelated  # outside its scope nothing changes
    stop(client)

    again = start()  # same data dir: the edit is back, answering the same
    assert generate(again, PROMPT) == after
    assert again.delete(f"/edits/{edit['id']}").json()["status"] == "withdrawn"
    assert generate(again, PROMPT) == before
    stop(again)
    assert generate(start(), PROMPT) == before  # and stays withdrawn


def test_a_toy_method_needs_one_package_and_one_registration(settings, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "toy", TOY)  # the one registration
    toy_settings = with_methods(registry.METHODS)(
        _env_file=None,
        data_dir=settings.data_dir,
        cache_dir=settings.cache_dir,
        model=settings.model,
        device="cpu",
        torch_threads=1,
        scope=ScopeConfig(use_trained=False),
        toy=ToyConfig(marker="from the settings"),
    )
    assert toy_settings.toy.marker == "from the settings"  # the method's section of the settings

    from fastapi.testclient import TestClient

    def serve() -> TestClient:
        client = TestClient(create_app(toy_settings))
        client.__enter__()
        wait_ready(client.app)
        return client

    client = serve()
    try:
        editor = client.app.state.service.editors["toy"]
        assert editor.config.marker == "from the settings"
        before = generate(client, PROMPT)
        edit = create(client, method="toy")
        assert owners(generate(client, PROMPT)) == {edit["id"]}
        assert owners(generate(client, UNRELATED)) == {None}
        assert 'editserve_edits_active{method="toy"} 1.0' in client.get("/metrics").text
    finally:
        stop(client)
    client = serve()  # restored from its blob at the next start
    try:
        assert owners(generate(client, PROMPT)) == {edit["id"]}
        client.delete(f"/edits/{edit['id']}")
        assert generate(client, PROMPT) == before
    finally:
        stop(client)
