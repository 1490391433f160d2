"""CI-sized runs of `editserve eval` and `editserve bench` on the real packaged model (dev split only).

Checks the files' keys and value ranges, never timings or scores beyond their range. The set-up
products they use (the converted model, SERAC's adapter) come from the fixtures in conftest.py; the
unedited predictions are not read from a cache (--no-cache)."""

import json

import pytest

from evaluation import bench, cli, metrics

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

UNIT = ("es", "ps", "locality", "es_gen", "ps_gen", "ns", "rs", "con")
WILD = (
    "chat_coherent",
    "open_mentions",
    "open_coherent",
    "yes_no",
    "yes_no_unedited",
    "unrelated_same",
    "distracted_same",
)


def _last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def _eval(out, editserve_cache, *argv: str) -> int:
    return cli.main(
        [
            "--dataset",
            "zsre",
            "--split",
            "dev",
            *argv,
            "--out",
            str(out),
            "--cache-dir",
            str(editserve_cache),
            "--no-cache",
        ]
    )


def test_eval_on_gemma3_a_short_zsre_sample(tmp_path, capsys, editserve_cache, gemma3_model_dir):
    """The harness on the second packaged backbone: the edits take, the unedited answers stay."""
    out = tmp_path / "gemma3"
    assert _eval(out, editserve_cache, "--n", "10", "--method", "ireva", "--model", "packaged:gemma3-270m") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_edits"] == 10 and m["es"] >= 0.9 and m["locality"] >= 0.9, m
    assert "gemma3-270m" in (out / "report.md").read_text()


@pytest.mark.parametrize("method", ["none", "ireva", "serac", "ike"])
def test_eval_n5_dev(method, tmp_path, capsys, editserve_cache, packaged_model_dir, serac_adapter):
    out = tmp_path / method
    assert _eval(out, editserve_cache, "--n", "5", "--method", method) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert tuple(m) == metrics.METRIC_KEYS
    assert _last_json_line(capsys.readouterr().out) == m
    for key in UNIT:
        if key in ("rs", "con") and method in ("none", "ike"):
            assert m[key] is None  # nothing to withdraw
            continue
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert m["n_edits"] == 5
    for key in WILD:  # zsRE dev gives a true answer: the answers in the wild are judged
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert m["fluency"] > 0  # every method answers a chat turn in words (SERAC's counterfactual too)
    assert m["seconds"] > 0 and m["insert_seconds_per_edit"] >= 0
    if method == "none":
        assert m["locality"] == 1.0 and m["insert_seconds_per_edit"] == 0.0
        assert m["yes_no"] == m["yes_no_unedited"] and m["fluency"] == 1.0  # it is the unedited model
    report = (out / "report.md").read_text()
    assert "| es |" in report
    if method == "serac":  # the report names the adapter: the shared one set-up trained
        assert json.dumps(str(serac_adapter)) in report
    assert len((out / "records.jsonl").read_text().splitlines()) == 5


def test_eval_sample_inserts_all_edits_and_measures_some(tmp_path, editserve_cache, packaged_model_dir):
    out = tmp_path / "sampled"
    assert _eval(out, editserve_cache, "--n", "6", "--eval-sample", "3", "--method", "ireva") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_edits"] == 6
    measured = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(measured) == 3
    report = (out / "report.md").read_text()
    assert "6 edits, measured on a sample of 3" in report and "--eval-sample 3" in report
    # the sampled records were edited by their own edits, not by the first three
    assert m["es"] > 0.9


def test_bench_small(tmp_path, capsys, editserve_cache, packaged_model_dir):
    out = tmp_path / "bench"
    argv = [
        "--n",
        "8",
        "--real",
        "4",
        "--samples",
        "2",
        "--gen-prompts",
        "2",
        "--gen-tokens",
        "4",
        "--scope-queries",
        "4",
        "--skip",
        "restart",
        "--out",
        str(out),
        "--cache-dir",
        str(editserve_cache),
    ]
    assert bench.main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert _last_json_line(capsys.readouterr().out) == result
    for key in bench.KEYS:
        assert key in result
    assert result["insert_over_forward"] > 0 and result["gen_speed_ratio"] > 0
    assert result["scope_decision_ms"] > 0 and result["scope_decision_over_forward"] > 0
    assert result["bytes_per_neuron"] >= 2 * 576 * 4 and result["n_edits"] == 8  # keys and values at least
    assert result["details"]["fill"]["synthetic_edits"] == 4
