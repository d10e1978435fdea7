"""Short real training runs on synthetic data: the tower learns, SSMTL trains, divergence stops the export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from export.cli import app as cli
from export.evaluate import exact_scorer, rank
from export.interactions import USER_ID
from export.pipeline import run_export
from export.synthetic import SyntheticConfig, generate
from export.towers import TwoTower
from export.train import DivergedError, Step, TrainConfig, step_seconds, train, training_view, with_overrides
from index import export_dir

SMALL = SyntheticConfig(num_users=1200, num_candidates=3000, num_clusters=60, seed=3)


def popularity_recall(data: object) -> float:
    """Recall@20 of recommending the most popular unseen candidates to everyone."""
    assert isinstance(data, type(generate(SMALL)))
    popularity = np.bincount(data.train[:, 1], minlength=data.num_candidates).astype(np.float32)
    users = np.ones((data.num_users, 1), dtype=np.float32)
    return rank(data, users, exact_scorer(popularity[:, None])).metrics(20)["recall@20"]


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate(SMALL)


@pytest.mark.parametrize("objective", ["retrieval", "ssmtl"])
def test_a_short_run_beats_the_popularity_baseline(data, objective: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run_export(data, TrainConfig(epochs=6, dim=32, objective=objective, seed=1), tmp_path)
    baseline = popularity_recall(data)
    print(f"{objective}: {result.metrics}, popularity recall@20 {baseline}")
    assert result.metrics["recall@20"] > 1.25 * baseline
    assert result.metrics["onnx_parity"] <= 1e-5
    for name in (export_dir.TOWER, export_dir.EMBEDDINGS, export_dir.IDS, export_dir.SPEC, export_dir.PROVENANCE):
        assert (tmp_path / name).is_file()
    losses = result.trained.epoch_losses
    assert losses[-1] < losses[0]


def test_a_nan_feature_stops_training_before_anything_is_exported(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    activity = data.user_features["activity"].copy()
    activity[::7] = np.nan
    broken = dataclasses.replace(data, user_features={**data.user_features, "activity": activity})
    with pytest.raises(DivergedError, match="diverged"):
        run_export(broken, TrainConfig(epochs=1, dim=16), tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_the_same_seed_trains_the_same_tower(data) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=1, dim=16, seed=5, objective="ssmtl")
    first, second = train(data, config), train(data, config)
    assert first.epoch_losses == second.epoch_losses


def test_without_user_id_rows_the_tower_embeds_users_from_their_history_alone(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=2, dim=16, user_id_rows=False, history_dropout=0.2, embedding_l2=1e-4)
    view = training_view(data, config)
    assert view.feature_spec.field(USER_ID) is None and data.feature_spec.field(USER_ID) is not None
    result = run_export(data, config, tmp_path)
    assert "user_id" not in result.trained.user_tower.encoder.tables
    spec = json.loads((tmp_path / export_dir.SPEC).read_text())
    assert USER_ID not in [f["name"] for f in spec["fields"]]
    assert result.metrics["onnx_parity"] <= 1e-5
    assert result.metrics["recall@20"] > popularity_recall(data)


def test_a_propagated_candidate_table_trains_and_is_served_as_trained(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=3, dim=32, seed=1, user_id_rows=False, propagation_layers=1, propagation_weight=0.5)
    result = run_export(data, config, tmp_path)
    table = result.trained.model.candidate_ids
    assert table.propagated is not None and not table.propagated.requires_grad
    propagated = table.propagation(table.ids.weight.detach())  # type: ignore[misc]
    assert torch.allclose(table.propagated, propagated)
    assert not torch.allclose(table.propagated, table.ids.weight.detach())
    assert result.metrics["onnx_parity"] <= 1e-5
    assert result.metrics["recall@20"] > 1.25 * popularity_recall(data)


def test_step_seconds_times_each_configuration_in_turn(data) -> None:  # type: ignore[no-untyped-def]
    configs = [TrainConfig(dim=16, batch_size=256, objective=o) for o in ("retrieval", "ssmtl")]
    seconds = step_seconds(data, configs, steps=3, rounds=2)
    assert len(seconds) == 2
    assert all(0 < s < 60 for s in seconds)


def test_the_log_q_weight_scales_every_columns_correction(data) -> None:  # type: ignore[no-untyped-def]
    def corrections(weight: float) -> torch.Tensor:
        config = TrainConfig(dim=16, logq_weight=weight)
        step = Step(data, TwoTower(data, config.dim), config)
        assert step.log_q is not None
        return step.log_q

    assert torch.allclose(corrections(1.3), 1.3 * corrections(1.0))
    assert not torch.allclose(corrections(1.3), corrections(1.0))


def test_overrides_set_training_settings_by_name_with_their_types() -> None:
    config = with_overrides(TrainConfig(), ["temperature=0.04", "epochs=7", "user_id_rows=false", "objective=ssmtl"])
    assert (config.temperature, config.epochs, config.user_id_rows, config.objective) == (0.04, 7, False, "ssmtl")
    assert with_overrides(config, []) == config


@pytest.mark.parametrize(
    ("assignment", "reason"),
    [
        ("temprature=0.04", "a name among"),
        ("temperature", "a name among"),
        ("epochs=2.5", "epochs takes a int"),
        ("user_id_rows=maybe", "user_id_rows takes a bool"),
        ("objective=bpr", "unknown objective"),
    ],
)
def test_a_bad_override_names_the_setting_and_the_reason(assignment: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        with_overrides(TrainConfig(), [assignment])


def test_ebr_train_applies_set_and_records_it_in_the_run_config(tmp_path: Path) -> None:
    args = ["train", "--out", str(tmp_path), "--epochs", "1", "--set", "temperature=0.07", "--set", "dim=16"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["temperature"], config["dim"], config["epochs"]) == (0.07, 16, 1)
    assert json.loads((tmp_path / "metrics.json").read_text())["recall@20"] > 0

    refused = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "no"), "--set", "lr=fast"])
    assert refused.exit_code == 2
    assert "lr takes a float" in refused.output
    assert not (tmp_path / "no").exists()
