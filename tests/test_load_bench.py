"""`editserve bench serving --parts load` at a tiny scale: a real server process on the tiny model, two
levels of clients for two seconds, two real edits, the plain-transformers reference. Checks the file's
shape and that every request was answered, never timings."""

import json

import pytest

from evaluation import datasets, serving_bench

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_load_part_small(tmp_path, capsys, monkeypatch, tiny_model_dir):
    if not (datasets.data_root() / "nq").exists():
        pytest.skip(f"no NQ dev questions under {datasets.data_root()}")
    monkeypatch.setenv("EDITSERVE_METHODS", "ireva")  # SERAC has no adapter for the tiny model
    out = tmp_path / "load"
    argv = ["--parts", "load", "--out", str(out), "--clients", "1,8", "--seconds", "2", "--tokens", "4"]
    argv += ["--threads", "1", "--edits", "2", "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "cache")]
    assert serving_bench.main(argv) == 0

    result = json.loads((out / "serving.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert "first_token" not in result
    load = result["load"]
    assert load["torch_threads"] == 1 and load["torch_threads_from"] == "--threads"
    assert load["n_edits"] == 2 and load["edits"]["insert_seconds_total"] > 0
    assert [r["clients"] for r in load["levels"]] == [1, 8]
    for r in load["levels"]:
        assert r["errors"] == 0, r["errors_by_status"]
        assert r["requests_ok_total"] >= 1 and r["tokens_per_s"] >= 0
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"]
    assert [r["batch"] for r in load["reference"]["rows"]] == [1, 8]
    assert all(r["tokens_per_s"] > 0 for r in load["reference"]["rows"])
    assert [r["clients"] for r in load["levels_with_edits"]] == [1, 8]
    assert all(r["errors"] == 0 and r["requests_ok_total"] >= 1 for r in load["levels_with_edits"])
    assert set(load["ratios"]) == {
        "tokens_per_s_8_clients_over_1",
        "tokens_per_s_8_clients_over_plain_batch_8",
        "p95_8_clients_over_p50_1_client",
        "tokens_per_s_with_edits_over_without",
    }
    assert set(load["ratios"]["tokens_per_s_with_edits_over_without"]) == {"1", "8"}
    assert (out / "load.png").stat().st_size > 0
