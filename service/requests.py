"""The request and response bodies of the public API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from index.manifest import FeatureField, FeatureSpec
from service.validation import FLOAT32_MAX, absent_value


class RetrieveResponse(BaseModel):
    ids: list[int]
    scores: list[float]
    snapshot: str


class SnapshotInfo(BaseModel):
    version: str
    created_at: str
    dim: int
    num_candidates: int
    index_factory: str
    device: str
    search_defaults: dict[str, float]
    feature_spec: dict[str, Any]
    build_report: dict[str, Any]
    gate: dict[str, float]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = None


def retrieve_request_model(k_default: int, k_max: int, max_exclude: int) -> type[BaseModel]:
    """The request body with this deployment's limits, so the OpenAPI schema states them too."""
    return create_model(
        "RetrieveRequest",
        __config__=ConfigDict(extra="forbid"),
        features=(
            dict[str, Any],
            Field(description="user features, as the serving snapshot's spec names them"),
        ),
        k=(Annotated[int, Field(ge=1, le=k_max)], k_default),
        exclude_ids=(
            list[int],
            Field(default_factory=list, max_length=max_exclude, description="candidate ids never returned"),
        ),
    )


def features_json_schema(spec: FeatureSpec) -> dict[str, Any]:
    """The JSON Schema of `features` under this feature spec, so /openapi.json states what is accepted."""

    def field_schema(field: FeatureField) -> dict[str, Any]:
        if field.kind == "numeric":
            return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
        assert field.vocab_size is not None
        identifier = {"type": "integer", "minimum": 0, "maximum": field.vocab_size - 1}
        if field.kind == "categorical":
            return identifier
        return {"type": "array", "items": identifier, "maxItems": field.max_length}

    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in spec.fields},
        "required": [f.name for f in spec.fields if not f.optional],
        "additionalProperties": False,
    }


def accepting_validator(spec: FeatureSpec, k_default: int, k_max: int, max_exclude: int) -> SchemaValidator:
    """One pass over the raw JSON that accepts a well-formed request and returns it encoded, optional features
    filled in as `validate_features` fills them.

    It is strict (no 2.0 for an id, no "5" for k), so it refuses some requests the full path accepts; whatever
    it refuses goes through the full path, which accepts those and names the field of every mistake. It is
    only ever a faster way to the same answer.
    """

    def field_schema(field: FeatureField) -> cs.CoreSchema:
        if field.kind == "numeric":
            return cs.float_schema(strict=True, allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)
        identifier = cs.int_schema(strict=True, ge=0, lt=field.vocab_size)
        if field.kind == "categorical":
            return identifier
        return cs.list_schema(identifier, max_length=field.max_length, strict=True)

    def feature(field: FeatureField) -> cs.TypedDictField:
        if not field.optional:
            return cs.typed_dict_field(field_schema(field))
        absent = absent_value(field)
        filled = (
            cs.with_default_schema(field_schema(field), default_factory=list)
            if isinstance(absent, list)
            else cs.with_default_schema(field_schema(field), default=absent)
        )
        return cs.typed_dict_field(filled, required=False)

    features = cs.typed_dict_schema({f.name: feature(f) for f in spec.fields}, extra_behavior="forbid")
    k = cs.with_default_schema(cs.int_schema(strict=True, ge=1, le=k_max), default=k_default)
    exclude = cs.list_schema(cs.int_schema(strict=True), max_length=max_exclude, strict=True)
    request = cs.typed_dict_schema(
        {
            "features": cs.typed_dict_field(features),
            "k": cs.typed_dict_field(k, required=False),
            "exclude_ids": cs.typed_dict_field(cs.with_default_schema(exclude, default_factory=list), required=False),
        },
        extra_behavior="forbid",
    )
    return SchemaValidator(request)
