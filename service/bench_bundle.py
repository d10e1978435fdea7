"""A synthetic export of any size for the serving benchmark: clustered candidates and a small real ONNX tower.

No trained model is needed to measure serving: what matters is a real tower graph, a real index of the
right size and queries that land where the candidates are. Candidates are noisy copies of cluster centres;
the tower maps a request's `region` to one centre, nudged by its history and activity, so a query's
neighbours sit in a few clusters, as a trained tower's do. `onnx` comes from the train extra and is imported
only when an export is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from index.export_dir import EMBEDDINGS, IDS, PROVENANCE, QUERIES, SPEC, TOWER
from index.manifest import EMBEDDING_OUTPUT, FeatureField, FeatureSpec
from service.payloads import random_features
from service.validation import encode_batch

DIM = 64
HISTORY_VOCAB = 50_000
HISTORY_MAX = 50
OPSET = 17


def feature_spec(clusters: int) -> FeatureSpec:
    return FeatureSpec(
        fields=(
            FeatureField(name="region", kind="categorical", dtype="int64", vocab_size=clusters),
            FeatureField(name="activity", kind="numeric", dtype="float32", optional=True),
            FeatureField(
                name="history",
                kind="sequence",
                dtype="int64",
                vocab_size=HISTORY_VOCAB,
                max_length=HISTORY_MAX,
                optional=True,
            ),
        ),
        output=EMBEDDING_OUTPUT,
    )


def clusters_for(candidates: int) -> int:
    """About a thousand candidates per cluster, at least two clusters."""
    return max(2, candidates // 1000)


def write_synthetic_export(root: Path, candidates: int, queries: int = 1000, seed: int = 0) -> Path:
    """Write an export directory (tower, embeddings, ids, spec, held-out query inputs) for `build_snapshot`."""
    rng = np.random.default_rng(seed)
    clusters = clusters_for(candidates)
    spec = feature_spec(clusters)
    centres = _unit(rng.standard_normal((clusters, DIM)))
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    _write_tower(root / TOWER, centres, rotation, rng)
    members = rng.integers(0, clusters, size=candidates)
    embeddings = np.empty((candidates, DIM), dtype=np.float32)
    # In chunks: a million rows of float64 noise at once would double the peak memory for nothing.
    for start in range(0, candidates, 100_000):
        rows = slice(start, min(candidates, start + 100_000))
        noisy = centres[members[rows]] + rng.normal(0, 0.12, size=(rows.stop - rows.start, DIM))
        embeddings[rows] = _unit(noisy @ rotation)
    np.save(root / EMBEDDINGS, embeddings)
    np.save(root / IDS, np.arange(candidates, dtype=np.int64) * 7 + 1_000_000)
    (root / SPEC).write_text(spec.model_dump_json(indent=2))
    (root / PROVENANCE).write_text(json.dumps({"dataset": f"synthetic-{candidates}", "objective": "none"}))
    held_out = [random_features(spec, rng) for _ in range(queries)]
    np.savez(root / QUERIES, **encode_batch(spec, held_out))  # type: ignore[arg-type]
    return root


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _write_tower(path: Path, centres: np.ndarray, rotation: np.ndarray, rng: np.random.Generator) -> None:
    """embedding = normalise((centre[region] + mean(history vectors) + activity·w) @ rotation).

    The region table has one extra row, the unknown bucket the feature spec reserves; history is padded
    with -1, so padding is masked out of the mean.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    clusters = len(centres)
    region_table = np.vstack([centres, np.zeros((1, DIM), dtype=np.float32)])
    history_table = rng.normal(0, 1.0 / np.sqrt(DIM), size=(HISTORY_VOCAB, DIM)).astype(np.float32)
    weights = {
        "region_table": region_table.astype(np.float32),
        "history_table": history_table,
        "activity_w": rng.normal(0, 0.05, size=(1, DIM)).astype(np.float32),
        "rotation": rotation,
        "zero": np.array(0, dtype=np.int64),
        "one": np.array(1.0, dtype=np.float32),
        "axis1": np.array([1], dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
    }
    node = helper.make_node
    nodes = [
        node("Gather", ["region_table", "region"], ["r"]),
        node("GreaterOrEqual", ["history", "zero"], ["valid"]),
        node("Cast", ["valid"], ["mask"], to=TensorProto.FLOAT),
        node("Max", ["history", "zero"], ["safe_history"]),
        node("Gather", ["history_table", "safe_history"], ["h"]),
        node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        node("Mul", ["h", "mask3"], ["h_masked"]),
        node("ReduceSum", ["h_masked", "axis1"], ["h_sum"], keepdims=0),
        node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        node("Max", ["count", "one"], ["count_safe"]),
        node("Div", ["h_sum", "count_safe"], ["h_mean"]),
        node("Unsqueeze", ["activity", "axis1"], ["activity2"]),
        node("Mul", ["activity2", "activity_w"], ["a"]),
        node("Add", ["r", "h_mean"], ["rh"]),
        node("Add", ["rh", "a"], ["z"]),
        node("MatMul", ["z", "rotation"], ["rotated"]),
        node("LpNormalization", ["rotated"], [EMBEDDING_OUTPUT], axis=-1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        f"synthetic_user_tower_{clusters}",
        inputs=[
            helper.make_tensor_value_info("region", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("activity", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", "length"]),
        ],
        outputs=[helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
