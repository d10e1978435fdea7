from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from index.linear_tower import write_linear_tower
from index.manifest import FeatureField, FeatureSpec


def test_the_tower_is_a_normalised_linear_map(tmp_path: Path) -> None:
    spec = FeatureSpec(
        fields=(
            FeatureField(name="a", kind="numeric", dtype="float32"),
            FeatureField(name="b", kind="numeric", dtype="float32"),
            FeatureField(name="c", kind="categorical", dtype="int64", vocab_size=3),
        )
    )
    rng = np.random.default_rng(0)
    projection = rng.standard_normal((2, 4)).astype(np.float32)
    path = write_linear_tower(tmp_path / "tower.onnx", spec, 4, rng, projection)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["a", "b", "c"]
    assert session.get_outputs()[0].name == spec.output and session.get_outputs()[0].shape == ["batch", 4]
    feed = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 2.0], np.float32), "c": np.array([0, 3])}
    out = session.run([spec.output], feed)[0]
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    same_category = session.run([spec.output], {**feed, "c": np.array([0, 0])})[0]
    assert not np.allclose(out[1], same_category[1])  # the unknown bucket (3) has a row of its own


def test_sequences_are_not_supported(tmp_path: Path) -> None:
    spec = FeatureSpec(fields=(FeatureField(name="s", kind="sequence", dtype="int64", vocab_size=3, max_length=2),))
    with pytest.raises(ValueError, match="numeric and categorical features only"):
        write_linear_tower(tmp_path / "t.onnx", spec, 4, np.random.default_rng(0))
