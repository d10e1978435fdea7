"""Request features checked against the serving snapshot's feature spec, and encoded as tower inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from index.manifest import FeatureField, FeatureSpec

FLOAT32_MAX = float(np.finfo(np.float32).max)


class FeatureError(ValueError):
    """A client's mistake in one field; `loc` names it as FastAPI's 422 bodies do."""

    def __init__(self, loc: tuple[str | int, ...], message: str, kind: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.kind = kind


Encoded = dict[str, int | float | list[int]]


def validate_features(spec: FeatureSpec, features: dict[str, object]) -> Encoded:
    for name in features:
        if spec.field(name) is None:
            raise FeatureError(("body", "features", name), f"unknown feature {name!r}", "extra_forbidden")
    out: Encoded = {}
    for field in spec.fields:
        loc: tuple[str | int, ...] = ("body", "features", field.name)
        if field.name not in features:
            if not field.optional:
                raise FeatureError(loc, f"feature {field.name!r} is required", "missing")
            out[field.name] = absent_value(field)
            continue
        out[field.name] = _check(field, features[field.name], loc)
    return out


def absent_value(field: FeatureField) -> int | float | list[int]:
    """What an optional feature left out of a request stands for: the unknown id, the default, no history."""
    if field.kind == "categorical":
        assert field.vocab_size is not None
        return field.vocab_size
    if field.kind == "numeric":
        return field.default
    return []


def _check(field: FeatureField, value: object, loc: tuple[str | int, ...]) -> int | float | list[int]:
    if field.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FeatureError(loc, "expected a number", "float_type")
        if not math.isfinite(value):
            raise FeatureError(loc, "expected a finite number, got NaN or infinity", "finite_number")
        if abs(value) > FLOAT32_MAX:
            raise FeatureError(loc, f"{value:g} does not fit the tower's float32", "float32_range")
        return float(value)
    if field.kind == "categorical":
        return _id(field, value, loc)
    if not isinstance(value, list):
        raise FeatureError(loc, "expected a list of ids", "list_type")
    assert field.max_length is not None
    if len(value) > field.max_length:
        raise FeatureError(loc, f"at most {field.max_length} ids allowed, got {len(value)}", "too_long")
    return [_id(field, v, (*loc, i)) for i, v in enumerate(value)]


def _id(field: FeatureField, value: object, loc: tuple[str | int, ...]) -> int:
    # JSON Schema counts 2.0 as an integer, so it is accepted as one; 2.5 is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeatureError(loc, "expected an integer id", "int_type")
    assert field.vocab_size is not None
    if not 0 <= value < field.vocab_size:
        raise FeatureError(loc, f"id {value} is outside the vocabulary [0, {field.vocab_size})", "vocabulary")
    return value


def encode_batch(spec: FeatureSpec, requests: Sequence[Encoded]) -> dict[str, np.ndarray]:
    """Tower inputs for many validated requests; sequences padded with -1 to the longest (at least 1)."""
    inputs: dict[str, np.ndarray] = {}
    for field in spec.fields:
        values = [r[field.name] for r in requests]
        if field.kind == "sequence":
            width = max(1, *(len(v) for v in values))  # type: ignore[arg-type]
            matrix = np.full((len(values), width), -1, dtype=np.int64)
            for row, seq in enumerate(values):
                matrix[row, : len(seq)] = seq  # type: ignore[arg-type]
            inputs[field.name] = matrix
        else:
            inputs[field.name] = np.asarray(values, dtype=field.dtype)
    return inputs
