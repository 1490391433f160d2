"""`editserve fault --only database`, shortened: PostgreSQL (the tests' throwaway server) stopped for a few
seconds while four clients generate and one writes, on two real server processes (the tiny model)
sharing the database. The full run stops it for 10 s (docs/operations.md)."""

import pytest

from evaluation.outage import database_outage
from evaluation.postgres import Unavailable


@pytest.mark.integration
def test_the_database_stopped_under_load_loses_nothing(tmp_path, tiny_env):
    try:
        result = database_outage(tmp_path, tiny_env, down_s=4.0)
    except Unavailable as exc:
        pytest.skip(str(exc))
    assert result["ok"], result
    assert result["generations"] >= 20 and result["writes_refused"] >= 1 and result["acknowledged"] >= 3, result
