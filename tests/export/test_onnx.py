"""The exported user tower against torch: random requests, empty histories and unknown ids included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.datasets.friends import friend_data
from export.interactions import USER_ID, InteractionData
from export.onnx_export import ParityError, check_parity, export_user_tower
from export.synthetic import SyntheticConfig, generate
from export.towers import TwoTower
from index.manifest import FeatureField


def untrained_user_tower(data: InteractionData) -> torch.nn.Module:
    torch.manual_seed(0)
    return TwoTower(data, dim=16).user.eval()


def small_friend_graph() -> InteractionData:
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 50, size=(300, 2))
    bags = np.full((50, 3), -1, dtype=np.int64)
    bags[:, 0] = rng.integers(0, 9, size=50)
    features = {"tags": bags, "score": rng.normal(size=50).astype(np.float32)}
    fields = (
        FeatureField(name="tags", kind="sequence", dtype="int64", vocab_size=9, max_length=3),
        FeatureField(name="score", kind="numeric", dtype="float32", optional=True),
    )
    return friend_data("tiny-graph", edges, 50, features, fields, max_friends=20)


@pytest.mark.parametrize(
    "data", [generate(SyntheticConfig(num_users=200, num_candidates=500, num_clusters=10)), small_friend_graph()]
)
def test_onnx_matches_torch_on_random_requests(data: InteractionData, tmp_path: Path) -> None:
    tower = untrained_user_tower(data)
    export_user_tower(tower, tmp_path / "tower.onnx")  # type: ignore[arg-type]
    assert check_parity(tower, tmp_path / "tower.onnx") <= 1e-5  # type: ignore[arg-type]


def test_a_new_user_with_no_id_and_no_history_gets_a_unit_embedding(tmp_path: Path) -> None:
    data = generate(SyntheticConfig(num_users=200, num_candidates=500, num_clusters=10))
    tower = untrained_user_tower(data)
    export_user_tower(tower, tmp_path / "tower.onnx")  # type: ignore[arg-type]
    session = ort.InferenceSession(str(tmp_path / "tower.onnx"), providers=["CPUExecutionProvider"])
    user_id = data.feature_spec.field(USER_ID)
    assert user_id is not None and user_id.vocab_size is not None
    feed = {
        USER_ID: np.array([user_id.vocab_size, user_id.vocab_size], dtype=np.int64),  # the unknown bucket
        "region": np.array([0, 3], dtype=np.int64),
        "activity": np.array([0.0, 0.5], dtype=np.float32),
        "history": np.array([[-1, -1, -1], [4, 9, -1]], dtype=np.int64),  # empty, then two interactions
    }
    out = session.run(["embedding"], feed)[0]
    assert out.shape == (2, 16)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_parity_check_fails_for_a_tower_that_differs_from_its_export(tmp_path: Path) -> None:
    data = generate(SyntheticConfig(num_users=200, num_candidates=500, num_clusters=10))
    tower = untrained_user_tower(data)
    export_user_tower(tower, tmp_path / "tower.onnx")  # type: ignore[arg-type]
    with torch.no_grad():
        tower.linear.bias.add_(0.5)  # type: ignore[union-attr, operator]
    with pytest.raises(ParityError):
        check_parity(tower, tmp_path / "tower.onnx")  # type: ignore[arg-type]
