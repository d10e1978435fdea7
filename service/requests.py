"""The request and response bodies of the public API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from index.manifest import FeatureField, FeatureSpec
from service.validation import FLOAT32_MAX


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
