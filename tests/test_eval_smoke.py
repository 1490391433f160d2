"""CI-sized runs of `editserve eval` and `editserve bench` on the real packaged model (dev split only).

Checks the files' keys and value ranges, never timings or scores beyond their range."""
import json

import pytest

from evaluation import bench, run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

UNIT = ("es", "ps", "locality", "es_gen", "ps_gen", "ns", "rs", "con")


def _last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["none", "ireva", "serac"])
def test_eval_n5_dev(method, tmp_path, capsys):
    out = tmp_path / method
    assert run.main(["--dataset", "zsre", "--split", "dev", "--n", "5", "--method", method, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert tuple(metrics) == run.METRIC_KEYS
    assert _last_json_line(capsys.readouterr().out) == metrics
    for key in UNIT:
        if key in ("rs", "con") and method == "none":
            assert metrics[key] is None  # nothing to withdraw
            continue
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["n_edits"] == 5
    assert metrics["seconds"] > 0 and metrics["insert_seconds_per_edit"] >= 0
    if method == "none":
        assert metrics["locality"] == 1.0 and metrics["insert_seconds_per_edit"] == 0.0
    assert "| es |" in (out / "report.md").read_text()
    if method == "serac":  # the report names the adapter: by default the shared one set-up trained
        assert '"source": "shared"' in (out / "report.md").read_text()
    assert len((out / "records.jsonl").read_text().splitlines()) == 5


def test_eval_sample_inserts_all_edits_and_measures_some(tmp_path):
    out = tmp_path / "sampled"
    assert run.main(["--dataset", "zsre", "--split", "dev", "--n", "6", "--eval-sample", "3", "--method", "ireva",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_edits"] == 6
    measured = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(measured) == 3
    report = (out / "report.md").read_text()
    assert "6 edits, measured on a sample of 3" in report and "--eval-sample 3" in report
    # the sampled records were edited by their own edits, not by the first three
    assert metrics["es"] > 0.9


def test_bench_small(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--n", "8", "--real", "4", "--samples", "2", "--gen-prompts", "2", "--gen-tokens", "4",
            "--serac-queries", "4", "--skip", "restart", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert _last_json_line(capsys.readouterr().out) == result
    for key in bench.KEYS:
        assert key in result
    assert result["insert_over_forward"] > 0 and result["gen_speed_ratio"] > 0
    assert result["bytes_per_neuron"] > 0 and result["n_edits"] == 8
    assert result["details"]["fill"]["synthetic_edits"] == 4
