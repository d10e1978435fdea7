"""One training run end to end: train, export the user tower, check it, evaluate what is served."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.evaluate import exact_scorer, recall_ndcg
from export.onnx_export import check_parity, export_user_tower
from export.synthetic import InteractionData
from export.train import TrainConfig, Trained, candidate_embeddings, history_matrix, train
from index import export_dir
from index.export_dir import embed


@dataclass(frozen=True)
class ExportResult:
    root: Path
    trained: Trained
    metrics: dict[str, float]


def query_inputs(data: InteractionData, users: np.ndarray) -> dict[str, np.ndarray]:
    """Tower inputs for `users` as a request would carry them: features plus train history."""
    out: dict[str, np.ndarray] = {}
    for field in data.feature_spec.fields:
        if field.kind == "sequence":
            out[field.name] = history_matrix(data, field.name)[users]
        else:
            out[field.name] = data.user_features[field.name][users]
    return out


def run_export(data: InteractionData, config: TrainConfig, out: Path, eval_k: int = 20) -> ExportResult:
    trained = train(data, config)
    out.mkdir(parents=True, exist_ok=True)
    tower_path = out / export_dir.TOWER
    export_user_tower(trained.user_tower, tower_path)
    parity = check_parity(trained.user_tower, tower_path)
    embeddings = candidate_embeddings(trained, data.num_candidates)

    test_users = np.unique(data.test[:, 0])
    inputs = query_inputs(data, test_users)
    session = ort.InferenceSession(str(tower_path), providers=["CPUExecutionProvider"])
    user_embeddings = np.zeros((data.num_users, embeddings.shape[1]), dtype=np.float32)
    user_embeddings[test_users] = embed(session, data.feature_spec, inputs)
    recall, ndcg = recall_ndcg(user_embeddings, exact_scorer(embeddings), data.train, data.test, k=eval_k)
    metrics = {f"recall@{eval_k}": round(recall, 4), f"ndcg@{eval_k}": round(ndcg, 4), "onnx_parity": parity}

    np.save(out / export_dir.EMBEDDINGS, embeddings)
    np.save(out / export_dir.IDS, np.arange(data.num_candidates, dtype=np.int64))
    (out / export_dir.SPEC).write_text(data.feature_spec.model_dump_json(indent=2))
    np.savez(out / export_dir.QUERIES, **inputs)  # type: ignore[arg-type]
    provenance = {
        "dataset": data.name,
        "objective": "retrieval",
        "train": trained.summary(),
        "metrics": metrics,
    }
    (out / export_dir.PROVENANCE).write_text(json.dumps(provenance, indent=2))
    return ExportResult(out, trained, metrics)
