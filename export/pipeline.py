"""One training run end to end: train, export the user tower, check it, evaluate what is served."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.evaluate import exact_scorer, index_scorer, rank
from export.interactions import InteractionData, request_inputs
from export.onnx_export import check_parity, export_user_tower
from export.train import TrainConfig, Trained, candidate_embeddings, train, training_view
from index import export_dir
from index.export_dir import embed

__all__ = ["ExportResult", "query_inputs", "run_export"]

query_inputs = request_inputs


@dataclass(frozen=True)
class ExportResult:
    root: Path
    trained: Trained
    metrics: dict[str, float]


def served_user_embeddings(tower: Path, data: InteractionData, users: np.ndarray) -> np.ndarray:
    """User embeddings from the exported ONNX tower, one row per user (zeros for users not asked for)."""
    session = ort.InferenceSession(str(tower), providers=["CPUExecutionProvider"])
    embedded = embed(session, data.feature_spec, request_inputs(data, users))
    out = np.zeros((data.num_users, embedded.shape[1]), dtype=np.float32)
    out[users] = embedded
    return out


def run_export(
    data: InteractionData, config: TrainConfig, out: Path, eval_k: int = 20, through_index: bool = False
) -> ExportResult:
    """Train, export and evaluate; with `through_index` the ranking is also measured through IVF-PQ search."""
    data = training_view(data, config)
    trained = train(data, config)
    out.mkdir(parents=True, exist_ok=True)
    tower_path = out / export_dir.TOWER
    export_user_tower(trained.user_tower, tower_path)
    parity = check_parity(trained.user_tower, tower_path)
    embeddings = candidate_embeddings(trained, data)

    test_users = np.unique(data.test[:, 0])
    users = served_user_embeddings(tower_path, data, test_users)
    metrics: dict[str, float] = rank(data, users, exact_scorer(embeddings), k=eval_k).metrics(eval_k)
    if through_index:
        top, built = index_scorer(embeddings, users[test_users], seed=config.seed)
        metrics |= rank(data, users, top, k=eval_k).metrics(eval_k, prefix="ivfpq_")
        metrics["ivfpq_recall_vs_exact@100"] = built.report.recall_at_k
    metrics["onnx_parity"] = parity
    metrics["seconds_per_epoch"] = round(trained.seconds_per_epoch, 3)

    np.save(out / export_dir.EMBEDDINGS, embeddings)
    np.save(out / export_dir.IDS, np.arange(data.num_candidates, dtype=np.int64))
    (out / export_dir.SPEC).write_text(data.feature_spec.model_dump_json(indent=2))
    np.savez(out / export_dir.QUERIES, **request_inputs(data, test_users))  # type: ignore[arg-type]
    provenance = {
        "dataset": data.name,
        "split": data.split,
        "objective": config.objective,
        "train": trained.summary(),
        "metrics": metrics,
    }
    (out / export_dir.PROVENANCE).write_text(json.dumps(provenance, indent=2))
    return ExportResult(out, trained, metrics)
