"""Device choice: the CPU path always; the GPU path and its parity with the CPU where a GPU exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.search import recall_at_k
from service.devices import choose_placement, gpus_for_faiss
from service.snapshot import load_snapshot
from tests.conftest import VERSIONS

HAS_GPU = gpus_for_faiss() > 0


def test_cpu_is_chosen_when_asked() -> None:
    placement = choose_placement("cpu")
    assert placement.device == "cpu"
    assert placement.onnx_providers == ["CPUExecutionProvider"]


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback of a machine without a GPU")
def test_auto_falls_back_to_cpu_and_says_why() -> None:
    placement = choose_placement("auto")
    assert placement.device == "cpu"
    assert "no " in placement.reason


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal of a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_clearly() -> None:
    with pytest.raises(RuntimeError, match="EBR_DEVICE=cuda"):
        choose_placement("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs faiss-gpu and a CUDA device")
def test_gpu_top_k_matches_the_cpu(store: Path) -> None:
    cpu = load_snapshot(store / VERSIONS[0], choose_placement("cpu"), threads=1)
    gpu = load_snapshot(store / VERSIONS[0], choose_placement("cuda"), threads=1)
    golden = cpu.bundle.golden
    assert golden is not None
    requests = [{k: v[i].tolist() for k, v in golden.inputs.items()} for i in range(64)]
    for request in requests:
        request["history"] = [h for h in request["history"] if h >= 0]
    cpu_queries, gpu_queries = cpu.embed(requests), gpu.embed(requests)
    assert np.abs(cpu_queries - gpu_queries).max() <= 1e-4
    k = 50
    cpu_ids = [h.ids.tolist() for h in cpu.search(cpu_queries, [k] * 64, [frozenset()] * 64)]
    gpu_ids = [h.ids.tolist() for h in gpu.search(gpu_queries, [k] * 64, [frozenset()] * 64)]
    assert recall_at_k(np.array(cpu_ids), np.array(gpu_ids)) >= 0.9
