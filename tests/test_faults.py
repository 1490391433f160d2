"""`editserve fault` and `editserve soak`, shortened: kill -9 during streamed inserts (three moments), a
full disk, and generations during changes, on real server processes with the tiny model. The full
runs: `editserve fault` and `editserve soak` (docs/operations.md)."""

import pytest

from evaluation.faults import crash, disk_full
from evaluation.soak import soak


@pytest.mark.integration
def test_acknowledged_edits_survive_kill_9(tmp_path, tiny_env):
    result = crash(tmp_path, tiny_env, runs=3, inserts=40, timeout=300)
    assert result["ok"], result["problems"]
    runs = result["runs"]
    assert [r["killed_after_acks"] >= 1 for r in runs] == [True] * 3
    assert runs[-1]["acknowledged_total"] == sum(r["killed_after_acks"] for r in runs)
    assert all(r["missing"] == r["half"] == r["orphans"] == r["answers_changed"] == 0 for r in runs)
    assert runs[-1]["present"] >= runs[-1]["acknowledged_total"] and runs[-1]["answers_compared"] >= 3


@pytest.mark.integration
def test_a_full_disk_refuses_the_insert_and_loses_nothing(tmp_path, tiny_env):
    result = disk_full(tmp_path, tiny_env)
    if result["ok"] is None:
        pytest.skip(result["skipped"])
    assert result["ok"], result["problems"]
    # the free space left ranges from none to more than an insert needs: both outcomes are met
    assert result["refused"] >= 5 and result["accepted"] >= 1 and result["refused"] + result["accepted"] == 20


@pytest.mark.integration
def test_a_short_soak_has_no_5xx_and_no_mixed_answers(tmp_path, tiny_env):
    result = soak(tmp_path, tiny_env, seconds=15, clients=8)
    assert result["5xx"] == 0 and result["mixed"] == 0, result["examples"]
    assert result["generations"] >= 40 and result["changes"] >= 5 and result["other_errors"] == 0, result
