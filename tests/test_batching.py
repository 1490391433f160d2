"""Continuous batching (editors/batching.py): concurrent answers share decoding steps, each answer is
the one it would be alone, a request joins a running batch, and a change of the edits waits for the
answers in flight (none sees half of it)."""

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from editors.batching import ContendedLock
from editors.edited import Query
from editors.generation import Sampling
from editors.text_stream import collect
from tests.api.helpers import GOLD, OTHER_PROMPT, PROMPT, TARGET, UNRELATED, create, generate

LONG_TARGET = "English, then French, then German and Spanish"
REQUESTS = [
    {"prompt": PROMPT, "max_new_tokens": 12},
    {"prompt": PROMPT, "max_new_tokens": 12, "edits": "none"},
    {"prompt": OTHER_PROMPT, "max_new_tokens": 5},
    {"prompt": UNRELATED, "max_new_tokens": 9, "temperature": 0.9, "seed": 7},
    {"prompt": GOLD + " and also, as everyone knows, a much longer prompt than the others", "max_new_tokens": 7},
    {"messages": [{"role": "user", "content": "Where does Danielle Darrieux come from?"}], "max_new_tokens": 6},
]


@pytest.fixture
def slow(client):
    """Each forward pass of the tiny model takes 20 ms more, so that an answer is still running when the
    test's next request arrives."""
    handle = client.app.state.service.backbone.model.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    yield client
    handle.remove()


def _post_all(client: TestClient, bodies: list[dict]) -> list[dict]:
    out = [None] * len(bodies)

    def one(i):
        r = client.post("/generate", json=bodies[i])
        assert r.status_code == 200, r.text
        out[i] = r.json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_answers_share_steps_and_each_is_the_answer_it_gets_alone(client):
    edit = create(client)
    alone = [client.post("/generate", json=body).json() for body in REQUESTS]
    model = client.app.state.service.model
    asked = model.batcher.submitted
    together: list[dict] = []
    posting = threading.Thread(target=lambda: together.extend(_post_all(client, REQUESTS)))
    model.lock.acquire()  # every request arrives while the model is busy, so they all start together
    try:
        posting.start()
        deadline = time.monotonic() + 60
        while model.batcher.submitted - asked < len(REQUESTS) and time.monotonic() < deadline:
            posting.join(0.02)
    finally:
        model.lock.release()
    posting.join(120)
    assert model.batcher.peak_rows == len(REQUESTS)
    assert together == alone
    assert alone[0]["tokens"][0]["edit_id"] == edit["id"] and alone[0]["text"].lstrip().startswith(TARGET)
    assert all(t["edit_id"] is None for t in alone[1]["tokens"])  # edits: none, in the same batch


def test_a_request_joins_a_running_answer_and_neither_changes(slow):
    client = slow
    create(client)
    service = client.app.state.service
    query, other = Query.prompt(PROMPT), Query.prompt(UNRELATED)
    solo_long, solo_short = service.generate(query, 40), service.generate(other, 8)

    running = service.stream(query, 40)
    first = [next(running) for _ in range(3)]  # the long answer is under way
    joined = service.generate(other, 8)  # answered while it runs, at its steps
    rest = collect(running)
    assert service.model.batcher.peak_rows == 2
    assert [p.text for p in first] + [p.text for p in rest.pieces] == [p.text for p in solo_long.pieces]
    assert (joined.text, joined.tokens) == (solo_short.text, solo_short.tokens)


def test_a_request_joins_with_the_running_rows_step_where_no_edit_acts_and_neither_changes(start):
    client = start(quant="int4")  # the lean forward, whose decoding step can take prompts
    create(client)  # an edit neither prompt is about
    service = client.app.state.service
    query, other = Query.prompt(UNRELATED), Query.prompt(GOLD)
    solo_long, solo_short = service.generate(query, 30), service.generate(other, 8)
    batcher = service.model.batcher
    mixed = batcher.mixed_joins

    # every pass 20 ms slower (the lean forward calls the embedding, not the model), so that the long
    # answer still runs when the short one arrives
    slow = service.model.backbone.model.get_input_embeddings().register_forward_pre_hook(lambda *_: time.sleep(0.02))
    try:
        running = service.stream(query, 30)
        first = [next(running) for _ in range(3)]
        joined = service.generate(other, 8)  # its prompt goes through the running row's step
        rest = collect(running)
    finally:
        slow.remove()
    assert batcher.mixed_joins == mixed + 1 and batcher.peak_rows == 2
    assert [p.text for p in first] + [p.text for p in rest.pieces] == [p.text for p in solo_long.pieces]
    assert (joined.text, joined.tokens) == (solo_short.text, solo_short.tokens)


def test_a_change_waits_for_the_answers_in_flight_which_see_one_edit_set(slow):
    client = slow
    edit = create(client, PROMPT, LONG_TARGET)
    service = client.app.state.service
    query = Query.prompt(PROMPT)
    edited = service.generate(query, 24)
    assert sum(e == edit["id"] for _, e in edited.tokens) > 3  # the edit writes over several steps

    running = service.stream(query, 24)
    head = next(running)
    withdrawing = threading.Thread(target=lambda: client.delete(f"/edits/{edit['id']}"))
    withdrawing.start()
    answer = collect(running)
    withdrawing.join(60)
    assert [head.text] + [p.text for p in answer.pieces] == [t for t, _ in edited.tokens]
    assert [head.edit_id] + [p.edit_id for p in answer.pieces] == [e for _, e in edited.tokens]
    after = generate(client, PROMPT, 24)
    assert all(t["edit_id"] is None for t in after["tokens"])


def test_sampled_rows_keep_their_own_seeds_in_a_batch(slow):
    service = slow.app.state.service
    query = Query.prompt(UNRELATED)
    solo = [service.generate(query, 10, sampling=Sampling(1.0, 0.9, seed)) for seed in (1, 2)]
    streams = [service.stream(query, 10, sampling=Sampling(1.0, 0.9, seed)) for seed in (1, 2)]
    heads = [next(s) for s in streams]  # both rows are in the batch now
    got = [[h.token_id] + collect(s).token_ids for h, s in zip(heads, streams)]
    assert service.model.batcher.peak_rows == 2
    assert got == [g.token_ids for g in solo]


def test_a_thread_other_than_the_engine_computes_on_one_cpu_thread_while_it_holds_the_lock():
    lock, was = ContendedLock(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with lock:
            assert torch.get_num_threads() == 2  # no engine running yet (a start loads on all threads)
        lock.engine = threading.get_ident() + 1  # the engine is another thread
        with lock:
            assert torch.get_num_threads() == 1
            with lock:
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        lock.engine = threading.get_ident()  # the engine itself keeps them all
        with lock:
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(was)
