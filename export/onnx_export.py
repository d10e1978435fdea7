"""Exporting the user tower to ONNX and checking it against torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.towers import UserTower
from index.manifest import FeatureSpec


class ParityError(RuntimeError):
    pass


def example_inputs(spec: FeatureSpec, batch: int, rng: np.random.Generator, length: int = 7) -> list[np.ndarray]:
    """Random requests in spec order: unknown buckets, empty and full histories included."""
    inputs: list[np.ndarray] = []
    for field in spec.fields:
        if field.kind == "numeric":
            inputs.append(rng.normal(size=batch).astype(np.float32))
        elif field.kind == "categorical":
            assert field.vocab_size is not None
            inputs.append(rng.integers(0, field.vocab_size + 1, size=batch).astype(np.int64))
        else:
            assert field.vocab_size is not None and field.max_length is not None
            width = min(field.max_length, length)
            values = rng.integers(0, field.vocab_size, size=(batch, width)).astype(np.int64)
            cut = rng.integers(0, width + 1, size=batch)
            cut[0] = 0
            cut[-1] = width
            values[np.arange(width)[None, :] >= cut[:, None]] = -1
            inputs.append(values)
    return inputs


def export_user_tower(tower: UserTower, path: Path) -> None:
    spec = tower.spec
    names = [f.name for f in spec.fields]
    dynamic = {
        f.name: ({0: "batch", 1: f"{f.name}_length"} if f.kind == "sequence" else {0: "batch"}) for f in spec.fields
    }
    dynamic[spec.output] = {0: "batch"}
    example = tuple(torch.from_numpy(a) for a in example_inputs(spec, 4, np.random.default_rng(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            tower.eval(),
            example,
            str(path),
            input_names=names,
            output_names=[spec.output],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


@torch.no_grad()
def check_parity(tower: UserTower, path: Path, tolerance: float = 1e-5) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs; raises above `tolerance`.

    Batches and history lengths differ from the traced example's, so the dynamic axes are exercised too.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    longest = max((f.max_length or 1) for f in tower.spec.fields)
    for batch, length in ((1, 7), (3, 1), (17, 7), (64, longest), (256, 12)):
        inputs = example_inputs(tower.spec, batch, rng, length)
        expected = tower(*(torch.from_numpy(a) for a in inputs)).numpy()
        feed = {f.name: a for f, a in zip(tower.spec.fields, inputs, strict=True)}
        got = session.run([tower.spec.output], feed)[0]
        worst = max(worst, float(np.abs(expected - got).max()))
    if worst > tolerance:
        raise ParityError(f"ONNX output differs from torch by {worst:.2e} (> {tolerance:.0e})")
    return worst
