"""`editserve bench serving --parts load` at a tiny scale: a real server process on the tiny model, two
levels of clients for two seconds, two real edits, the plain-transformers reference. Checks the file's
shape and that every request was answered, never timings."""

import json

import pytest

from evaluation import datasets, load_bench, serving_bench

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
        "tokens_per_s_with_edits_over_before",
    }
    assert set(load["ratios"]["tokens_per_s_with_edits_over_without"]) == {"1", "8"}
    assert load["withdrawn"]["n_withdrawn"] == 2  # then every level again, the edits withdrawn
    for a, b, c in zip(load["levels"], load["levels_with_edits"], load["levels_after_withdrawal"]):
        assert a["started_s"] < b["started_s"] < c["started_s"]
    assert [r["clients"] for r in load["levels_after_withdrawal"]] == [1, 8]
    assert all(r["errors"] == 0 and r["requests_ok_total"] >= 1 for r in load["levels_after_withdrawal"])
    assert (out / "load.png").stat().st_size > 0


def test_the_llamacpp_reference_needs_a_packaged_gguf_and_says_how_to_install(tmp_path, monkeypatch, tiny_model_dir):
    from evaluation import llamacpp_ref

    with pytest.raises(SystemExit, match="not a packaged GGUF model"):
        llamacpp_ref.gguf_of(str(tiny_model_dir), tmp_path)
    monkeypatch.setattr(llamacpp_ref, "available", lambda: False)
    argv = ["--parts", "load", "--out", str(tmp_path / "out"), "--reference", "llamacpp", "--seconds", "1"]
    with pytest.raises(SystemExit, match="make llamacpp"):  # before any level runs: no server is started
        serving_bench.main(argv)
    assert not (tmp_path / "out" / "server-load.log").exists()


def test_the_llamacpp_reference_answers_on_the_packaged_gguf(editserve_cache, packaged_model_dir):
    from evaluation import llamacpp_ref

    if not llamacpp_ref.available():
        pytest.skip(f"llama-cpp-python is not installed ({llamacpp_ref.INSTALL}); a bench-only dependency")
    gguf = llamacpp_ref.gguf_of("packaged:smollm2-135m-instruct", editserve_cache)
    result = llamacpp_ref.run(gguf, ["The Eiffel Tower is located in"], seconds=1, tokens=4, threads=1)
    assert result["requests_ok_in_window"] >= 1 and result["tokens_per_s"] > 0
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in result["how"]


def test_the_speed_without_edits_is_read_off_the_line_at_the_edited_level_time():
    before, after = {"started_s": 0.0, "tokens_per_s": 50.0}, {"started_s": 100.0, "tokens_per_s": 40.0}
    assert load_bench._at_time_of({"started_s": 80.0}, before, after) == 42.0  # not the mean, 45
    assert load_bench._at_time_of({"started_s": 5.0}, before, {"started_s": 0.0, "tokens_per_s": 40.0}) == 45.0


def test_no_client_asks_a_prompt_the_inserts_may_edit():
    root = datasets.data_root()
    if not (root / "counterfact").exists():
        pytest.skip(f"no CounterFact data under {root}")
    plain, clients = load_bench.load_prompts("counterfact", root), load_bench.load_prompts("counterfact", root, 1000)
    edited = {p for p, _ in load_bench.edit_pairs(root, 1000)}
    assert not edited & set(clients) and edited & set(plain)  # zsRE's 1,000 pairs, then CounterFact's
    assert clients == [p for p in plain if p not in edited]
