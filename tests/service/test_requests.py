"""The one-pass accepting validator against the full path it stands in front of."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from index.manifest import FeatureField, FeatureSpec
from service.payloads import random_features
from service.requests import accepting_validator, retrieve_request_model
from service.validation import FeatureError, validate_features

SPEC = FeatureSpec(
    fields=(
        FeatureField(name="region", kind="categorical", dtype="int64", vocab_size=8),
        FeatureField(name="activity", kind="numeric", dtype="float32", optional=True, default=0.25),
        FeatureField(name="history", kind="sequence", dtype="int64", vocab_size=100, max_length=3, optional=True),
        FeatureField(name="tier", kind="categorical", dtype="int64", vocab_size=4, optional=True),
    )
)
K_DEFAULT, K_MAX, MAX_EXCLUDE = 10, 50, 4


def full_path(body: bytes) -> tuple[object, int, list[int]]:
    parsed = retrieve_request_model(K_DEFAULT, K_MAX, MAX_EXCLUDE).model_validate_json(body)
    return validate_features(SPEC, parsed.features), parsed.k, parsed.exclude_ids


def test_well_formed_requests_are_accepted_and_encoded_as_the_full_path_encodes_them() -> None:
    accepting = accepting_validator(SPEC, K_DEFAULT, K_MAX, MAX_EXCLUDE)
    rng = np.random.default_rng(0)
    bodies = [json.dumps({"features": random_features(SPEC, rng, history=i % 4), "k": 1 + i}) for i in range(40)]
    bodies += [
        '{"features": {"region": 0}}',
        '{"features": {"region": 7, "activity": 3, "history": []}, "exclude_ids": [1, -5, 1180591620717411303424]}',
        '{"features": {"region": 1, "activity": -3.4028234663852886e38}, "k": 50}',
    ]
    for body in bodies:
        parsed = accepting.validate_json(body)
        assert (parsed["features"], parsed["k"], parsed["exclude_ids"]) == full_path(body.encode()), body


@pytest.mark.parametrize(
    ("body", "full_path_accepts"),
    [
        ('{"features": {"region": 2.0, "history": [7.0]}}', True),  # integral floats count as ids there
        ('{"features": {"region": 1}, "k": "5"}', True),
        ('{"features": {"region": 8}}', False),
        ('{"features": {"region": true}}', False),
        ('{"features": {"region": 1, "colour": 2}}', False),
        ('{"features": {"region": 1, "activity": NaN}}', False),
        ('{"features": {"region": 1, "activity": 1e39}}', False),
        ('{"features": {"region": 1, "history": [1, 2, 3, 4]}}', False),
        ('{"features": {"region": 1, "history": [1, 100]}}', False),
        ('{"features": {"region": 1}, "k": 51}', False),
        ('{"features": {"region": 1}, "exclude_ids": [1, 2, 3, 4, 5]}', False),
        ('{"features": {"region": 1}, "extra": 1}', False),
        ('{"k": 5}', False),
    ],
)
def test_what_it_refuses_is_left_to_the_full_path(body: str, full_path_accepts: bool) -> None:
    with pytest.raises(ValidationError):
        accepting_validator(SPEC, K_DEFAULT, K_MAX, MAX_EXCLUDE).validate_json(body)
    if full_path_accepts:
        assert full_path(body.encode())[0]["region"] in (1, 2)  # type: ignore[index]
        return
    with pytest.raises((ValidationError, FeatureError)):
        full_path(body.encode())
