"""`editserve bench serving --parts load` at a tiny scale: a real server process on the tiny model and
its twin, two levels of clients for two seconds, two real edits, the plain-transformers reference.
Checks the file's shape and that every request was answered, never timings."""

import json
from types import SimpleNamespace

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
    for paired in (load["twins"], load["levels_with_edits"]):  # the twin beside the first, in turns
        assert [r["clients"] for r in paired] == [1, 8]
        assert all(r["errors"] == 0 and r["requests_ok_total"] >= 1 for r in paired)
        assert all(len(r["windows"]["first"]) == len(r["windows"]["twin"]) == 2 for r in paired)
    for t, e in zip(load["twins"], load["levels_with_edits"]):  # without edits, then with them
        assert t["windows"]["twin"][-1]["started_s"] < e["windows"]["twin"][0]["started_s"]
    assert set(load["ratios"]) == {
        "tokens_per_s_8_clients_over_1",
        "tokens_per_s_8_clients_over_plain_batch_8",
        "p95_8_clients_over_p50_1_client",
        "tokens_per_s_with_edits_over_without",
        "tokens_per_s_with_edits_over_without_all_levels",
        "twins_without_edits",
        "twin_with_edits_over_first",
    }
    ratios = load["ratios"]["tokens_per_s_with_edits_over_without"]
    pooled = (ratios["1"] * ratios["8"]) ** 0.5
    assert abs(load["ratios"]["tokens_per_s_with_edits_over_without_all_levels"] - pooled) < 1e-9
    assert set(load["ratios"]["tokens_per_s_with_edits_over_without"]) == {"1", "8"}
    assert load["withdrawn"]["n_withdrawn"] == 2
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


def test_twins_take_turns_first_twin_twin_first_so_that_a_linear_drift_falls_alike(monkeypatch):
    calls = []

    def level(url, prompts, clients, seconds, tokens):  # a machine slowing by 10 tokens/s a window
        calls.append((url, clients, seconds))
        speed = 100.0 - 10 * (len(calls) - 1)
        return {"tokens_per_s": speed, "p95_ms": 50.0, "errors": 0, "requests_ok_total": 3}

    monkeypatch.setattr(load_bench, "level", level)
    out = load_bench.paired("a", "b", ["p"], [1, 8], SimpleNamespace(seconds=20, tokens=4), "")
    assert [c[0] for c in calls] == ["a", "b", "b", "a"] * 2 and {c[2] for c in calls} == {10}
    assert [r["twin_over_first"] for r in out] == [1.0, 1.0]  # equal servers read equal, drift or not
    assert out[1]["tokens_per_s"] == 45.0 and out[1]["first_tokens_per_s"] == 45.0


def test_no_client_asks_a_prompt_the_inserts_may_edit():
    root = datasets.data_root()
    if not (root / "counterfact").exists():
        pytest.skip(f"no CounterFact data under {root}")
    plain, clients = load_bench.load_prompts("counterfact", root), load_bench.load_prompts("counterfact", root, 1000)
    edited = {p for p, _ in load_bench.edit_pairs(root, 1000)}
    assert not edited & set(clients) and edited & set(plain)  # zsRE's 1,000 pairs, then CounterFact's
    assert clients == [p for p in plain if p not in edited]
