import math

import pytest

from index.manifest import FeatureField, FeatureSpec
from service.validation import FeatureError, encode_batch, validate_features

SPEC = FeatureSpec(
    fields=(
        FeatureField(name="region", kind="categorical", dtype="int64", vocab_size=8),
        FeatureField(name="activity", kind="numeric", dtype="float32", optional=True, default=0.25),
        FeatureField(name="history", kind="sequence", dtype="int64", vocab_size=100, max_length=3, optional=True),
    )
)


def test_valid_features_are_encoded_and_optional_ones_defaulted() -> None:
    assert validate_features(SPEC, {"region": 3}) == {"region": 3, "activity": 0.25, "history": []}
    assert validate_features(SPEC, {"region": 0, "activity": 1, "history": [99, 0]}) == {
        "region": 0,
        "activity": 1.0,
        "history": [99, 0],
    }


@pytest.mark.parametrize(
    ("features", "loc", "kind"),
    [
        ({"region": 1, "colour": 2}, ("body", "features", "colour"), "extra_forbidden"),
        ({}, ("body", "features", "region"), "missing"),
        ({"region": "3"}, ("body", "features", "region"), "int_type"),
        ({"region": True}, ("body", "features", "region"), "int_type"),
        ({"region": 2.5}, ("body", "features", "region"), "int_type"),
        ({"region": 8}, ("body", "features", "region"), "vocabulary"),
        ({"region": -1}, ("body", "features", "region"), "vocabulary"),
        ({"region": 1, "activity": math.nan}, ("body", "features", "activity"), "finite_number"),
        ({"region": 1, "activity": math.inf}, ("body", "features", "activity"), "finite_number"),
        ({"region": 1, "activity": "high"}, ("body", "features", "activity"), "float_type"),
        ({"region": 1, "activity": -1.97e253}, ("body", "features", "activity"), "float32_range"),
        ({"region": 1, "history": 5}, ("body", "features", "history"), "list_type"),
        ({"region": 1, "history": [1, 2, 3, 4]}, ("body", "features", "history"), "too_long"),
        ({"region": 1, "history": [1, 100]}, ("body", "features", "history", 1), "vocabulary"),
        ({"region": 1, "history": [1, None]}, ("body", "features", "history", 1), "int_type"),
    ],
)
def test_bad_features_name_their_field(features: dict[str, object], loc: tuple[object, ...], kind: str) -> None:
    with pytest.raises(FeatureError) as raised:
        validate_features(SPEC, features)
    assert raised.value.loc == loc
    assert raised.value.kind == kind


def test_integral_floats_count_as_ids_as_json_schema_says() -> None:
    assert validate_features(SPEC, {"region": 2.0, "history": [7.0]})["history"] == [7]


def test_batches_pad_sequences_to_the_longest_and_keep_dtypes() -> None:
    requests = [validate_features(SPEC, {"region": 1, "history": [4, 5]}), validate_features(SPEC, {"region": 2})]
    inputs = encode_batch(SPEC, requests)
    assert inputs["history"].tolist() == [[4, 5], [-1, -1]]
    assert inputs["region"].dtype.name == "int64"
    assert inputs["activity"].dtype.name == "float32"


def test_a_batch_of_empty_histories_still_has_one_column() -> None:
    inputs = encode_batch(SPEC, [validate_features(SPEC, {"region": 1})])
    assert inputs["history"].shape == (1, 1)
