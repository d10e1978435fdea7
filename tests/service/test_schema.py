"""Schemathesis against a real `ebr serve` process: generated requests never get a 5xx, responses conform."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import ServerFactory


def test_the_api_conforms_to_its_schema(store: Path, server_factory: ServerFactory) -> None:
    server = server_factory(store, k_max="200", admin_token="t0ken")
    server.wait_ready()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
        )
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate()

        conforms()
        checked.append(operation.label)
    print(f"schemathesis checked {len(checked)} operations: {', '.join(checked)}")
    assert "POST /v1/retrieve" in checked
