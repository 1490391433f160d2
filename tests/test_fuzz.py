"""schemathesis over the OpenAPI schema, every operation, against a real server on 127.0.0.1 (the tiny
model): no 5xx, and every 4xx readable. Generation lengths are capped per case so the run stays short."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from app.main import create_app
from tests.conftest import served, tiny_settings

EXAMPLES = 50
LENGTHS = ("max_tokens", "max_new_tokens", "max_completion_tokens")


@pytest.fixture(scope="module")
def fuzz_url(tiny_model_dir, tmp_path_factory):
    with served(create_app(tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("fuzz")))) as url:
        yield url


def check(case) -> int:
    if isinstance(case.body, dict):  # the schema allows 512 tokens x 8 choices; a fuzz needs far fewer
        for name in LENGTHS:
            if isinstance(case.body.get(name), int) and case.body[name] > 4:
                case.body[name] = 4
        if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
            case.body["n"] = 2
    response = case.call(timeout=120)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if 400 <= response.status_code < 500:
        body = response.json()
        message = body.get("detail") if "detail" in body else body.get("error", {}).get("message")
        assert isinstance(message, str) and message.strip(), body
    return response.status_code


def fuzz(operation) -> list[int]:
    seen = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def run(case):
        seen.append(check(case))

    run()
    return seen


@pytest.mark.integration
def test_every_operation_fuzzed_gives_no_5xx_and_readable_4xx(fuzz_url):
    # Hypothesis is driven here, operation by operation, rather than through schemathesis' pytest
    # plugin (which does not run under this pytest).
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    statuses: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        statuses[f"{operation.method.upper()} {operation.path}"] = fuzz(operation)
    total = sum(len(v) for v in statuses.values())
    assert len(statuses) >= 18 and total >= 500, (total, {k: len(v) for k, v in statuses.items()})
    every = [s for v in statuses.values() for s in v]
    assert any(s < 300 for s in every) and any(400 <= s < 500 for s in every)
