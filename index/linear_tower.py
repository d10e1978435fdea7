"""A real ONNX user tower without training: numeric and categorical features, a linear map, L2 normalisation.

For benchmarks and tests that need a bundle whose tower ONNX Runtime really runs. It needs the `onnx`
package (the `train` extra), which the rest of `index/` does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from index.manifest import FeatureSpec

OPSET = 17
IR_VERSION = 9


def write_linear_tower(
    path: Path, spec: FeatureSpec, dim: int, rng: np.random.Generator, projection: np.ndarray | None = None
) -> Path:
    """Numeric features concatenated and multiplied by `projection` (random when not given), plus one random
    embedding row per categorical feature (vocab_size + 1 rows: the last is the unknown bucket), normalised.
    """
    numeric = [f for f in spec.fields if f.kind == "numeric"]
    categorical = [f for f in spec.fields if f.kind == "categorical"]
    if len(numeric) + len(categorical) != len(spec.fields):
        raise ValueError("a linear tower takes numeric and categorical features only")
    nodes, initializers, terms = [], [], []
    if numeric:
        if projection is None:
            projection = rng.standard_normal((len(numeric), dim)).astype(np.float32)
        if projection.shape != (len(numeric), dim):
            raise ValueError(f"projection must be ({len(numeric)}, {dim}), got {projection.shape}")
        initializers += [
            numpy_helper.from_array(np.asarray(projection, np.float32), "projection"),
            numpy_helper.from_array(np.array([1], np.int64), "column_axis"),
        ]
        for f in numeric:
            nodes.append(helper.make_node("Unsqueeze", [f.name, "column_axis"], [f"{f.name}.column"]))
        nodes.append(helper.make_node("Concat", [f"{f.name}.column" for f in numeric], ["numeric"], axis=1))
        nodes.append(helper.make_node("MatMul", ["numeric", "projection"], ["projected"]))
        terms.append("projected")
    for f in categorical:
        assert f.vocab_size is not None
        table = rng.standard_normal((f.vocab_size + 1, dim)).astype(np.float32)
        initializers.append(numpy_helper.from_array(table, f"{f.name}.table"))
        nodes.append(helper.make_node("Gather", [f"{f.name}.table", f.name], [f"{f.name}.embedded"], axis=0))
        terms.append(f"{f.name}.embedded")
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"sum.{i}"]))
        total = f"sum.{i}"
    nodes.append(helper.make_node("LpNormalization", [total], [spec.output], axis=1, p=2))
    inputs = [
        helper.make_tensor_value_info(
            f.name, TensorProto.FLOAT if f.dtype == "float32" else TensorProto.INT64, ["batch"]
        )
        for f in spec.fields
    ]
    output = helper.make_tensor_value_info(spec.output, TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph(nodes, "linear_tower", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
