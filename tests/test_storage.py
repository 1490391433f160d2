"""The repository and the blob store on a real SQLite file: a failed commit leaves no trace."""

import sqlite3
from datetime import UTC

import pytest
import torch
from sqlalchemy.exc import IntegrityError

from storage import migrate
from storage.blobs import BlobStore
from storage.repository import DB_FILE, Repository, database_url


@pytest.fixture
def repo(tmp_path):
    migrate.upgrade(database_url(tmp_path))
    repository = Repository(tmp_path)
    yield repository
    repository.close()


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"keys": torch.randn(2, 8, generator=g), "values": torch.randn(2, 8, generator=g)}


def create(repo, edit_id: str, prompt: str = "p", seed: int = 0, **fields):
    args = dict(
        edit_id=edit_id, method="ireva", prompt=prompt, target="t", retrofit=False, neurons=2, tensors=tensors(seed)
    )
    return repo.create(**(args | fields))


def fail(repo, statement: str) -> None:
    with sqlite3.connect(repo.data_dir / DB_FILE) as con:
        con.execute(f"CREATE TRIGGER fail BEFORE {statement} ON edits BEGIN SELECT RAISE(ABORT, 'no'); END")


def test_blob_round_trip_leaves_no_temp_file(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    store.write("a.safetensors", tensors())
    assert store.names() == ["a.safetensors"]
    for name, t in store.read("a.safetensors").items():
        assert torch.equal(t, tensors()[name])
    store.write("a.safetensors", tensors(1))  # replaced whole
    assert torch.equal(store.read("a.safetensors")["keys"], tensors(1)["keys"])
    store.delete("a.safetensors")
    store.delete("a.safetensors")  # deleting twice is fine
    assert store.names() == []


def test_create_then_read_back(repo):
    record = create(repo, "e1")
    got = repo.get("e1")
    assert (got.method, got.prompt, got.status, got.neurons, got.blob) == ("ireva", "p", "active", 2, record.blob)
    assert got.created_at == got.updated_at and got.created_at.tzinfo == UTC
    assert torch.equal(repo.read_tensors(got)["values"], tensors()["values"])
    assert repo.get("nope") is None


def test_failed_commit_removes_the_blob_it_wrote(repo):
    fail(repo, "INSERT")
    with pytest.raises(IntegrityError):
        create(repo, "e1")
    assert repo.get("e1") is None and repo.blobs.names() == []


def test_list_filters_orders_and_counts(repo):
    for i in range(5):
        create(repo, f"e{i}", prompt=f"p{i}", method="serac" if i == 4 else "ireva")
    repo.withdraw("e1")
    repo.mark_corrupt("e2", "blob gone")
    records, count = repo.list()
    assert count == 5 and [r.id for r in records] == ["e0", "e1", "e2", "e3", "e4"]
    assert [r.id for r in repo.list(status="active")[0]] == ["e0", "e3", "e4"]
    assert [r.id for r in repo.list(status="active", method="ireva")[0]] == ["e0", "e3"]
    page, count = repo.list(limit=2, offset=2)
    assert count == 5 and [r.id for r in page] == ["e2", "e3"]
    assert repo.list(limit=0) == ([], 5)
    assert repo.get("e2").error == "blob gone"


def test_one_active_edit_per_prompt_and_with_prompt_filters_method_and_status(repo):
    create(repo, "e1", prompt="same")
    blobs = repo.blobs.names()
    with pytest.raises(IntegrityError):  # the database itself refuses a second active edit of a prompt
        create(repo, "e2", prompt="same", method="serac")
    assert repo.blobs.names() == blobs and repo.get("e2") is None
    assert [r.id for r in repo.with_prompt("ireva", "same", "active")] == ["e1"]
    repo.withdraw("e1")
    create(repo, "e2", prompt="same", method="serac")  # once the first is withdrawn
    assert repo.with_prompt("ireva", "same", "active") == []
    assert [r.id for r in repo.with_prompt("ireva", "same", "withdrawn")] == ["e1"]
    assert [r.id for r in repo.with_prompt("serac", "same", "active")] == ["e2"]
    create(repo, "e3", prompt="other")
    with pytest.raises(IntegrityError):  # nor can a retrain take an active edit's prompt
        repo.retrain("e3", prompt="same", target="t", neurons=1, tensors=tensors())
    assert repo.get("e3").prompt == "other"


def test_retrain_swaps_the_blob_only_when_committed(repo):
    old = create(repo, "e1")
    fail(repo, "UPDATE")
    with pytest.raises(IntegrityError):
        repo.retrain("e1", prompt="p2", target="t2", neurons=3, tensors=tensors(1))
    assert repo.blobs.names() == [old.blob] and repo.get("e1").target == "t"
    with sqlite3.connect(repo.data_dir / DB_FILE) as con:
        con.execute("DROP TRIGGER fail")

    new = repo.retrain("e1", prompt="p2", target="t2", neurons=3, tensors=tensors(1))
    assert repo.blobs.names() == [new.blob] != [old.blob]
    got = repo.get("e1")
    assert (got.prompt, got.target, got.neurons) == ("p2", "t2", 3) and got.updated_at > got.created_at
    assert torch.equal(repo.read_tensors(got)["keys"], tensors(1)["keys"])


def test_withdraw_keeps_record_and_blob(repo):
    record = create(repo, "e1")
    repo.withdraw("e1")
    got = repo.get("e1")
    assert got.status == "withdrawn" and got.withdrawn_at is not None
    assert repo.blobs.names() == [record.blob]


def test_remove_orphans_keeps_every_named_blob(repo):
    record = create(repo, "e1")
    repo.withdraw("e1")
    repo.save_editor_state("ireva", {"layer": 1}, {"centre": torch.ones(8)})
    named = repo.blobs.names()
    (repo.blobs.root / "stray.safetensors").write_bytes(b"x")
    (repo.blobs.root / f"{record.blob}.tmp").write_bytes(b"x")
    assert sorted(repo.remove_orphans()) == sorted(["stray.safetensors", f"{record.blob}.tmp"])
    assert repo.blobs.names() == named


def test_editor_state_is_saved_and_replaced(repo):
    assert repo.editor_state("ireva") is None
    repo.save_editor_state("ireva", {"model": "m", "layer": 1}, {"centre": torch.ones(8)})
    state = repo.editor_state("ireva")
    assert state.fingerprint == {"model": "m", "layer": 1}
    assert torch.equal(repo.read_editor_state(state)["centre"], torch.ones(8))
    repo.save_editor_state("ireva", {"model": "m", "layer": 0}, {"centre": torch.zeros(8)})
    state = repo.editor_state("ireva")
    assert state.fingerprint["layer"] == 0 and repo.blobs.names() == [state.blob]
