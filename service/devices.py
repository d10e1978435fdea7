"""Where tower and index run: the CUDA provider and a FAISS GPU index when present, else the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import onnxruntime as ort
import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Placement:
    device: Literal["cpu", "cuda"]
    onnx_providers: list[str]
    reason: str

    def place_index(
        self, index: faiss.Index, params: faiss.SearchParameters | None
    ) -> tuple[faiss.Index, faiss.SearchParameters | None]:
        """The index to search on this device, with the parameters that apply to it.

        FAISS's GPU indexes have no 4-bit fast-scan PQ, so where the index cannot move as it is, the GPU
        searches exhaustively over the vectors decoded from the refinement stage: exact over those codes,
        and on a GPU faster than the CPU's approximate search.
        """
        if self.device == "cpu":
            return index, params
        resources = faiss.StandardGpuResources()
        try:
            return faiss.index_cpu_to_gpu(resources, 0, index), None
        except (AttributeError, RuntimeError) as e:
            if not isinstance(index, faiss.IndexRefine):
                log.warning("index_stays_on_cpu", reason=str(e))
                return index, params
            vectors = index.refine_index.reconstruct_n(0, index.ntotal)
            flat = faiss.GpuIndexFlatIP(resources, index.d)
            flat.add(vectors)
            log.info("gpu_exhaustive_search", reason=str(e), vectors=int(index.ntotal))
            return flat, None


def gpus_for_faiss() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_placement(requested: Literal["auto", "cpu", "cuda"]) -> Placement:
    cpu = Placement("cpu", ["CPUExecutionProvider"], "")
    if requested == "cpu":
        return Placement("cpu", cpu.onnx_providers, "EBR_DEVICE=cpu")
    has_cuda_provider = "CUDAExecutionProvider" in ort.get_available_providers()
    gpus = gpus_for_faiss()
    if has_cuda_provider and gpus > 0:
        placement = Placement("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], f"{gpus} GPU(s)")
    else:
        missing = [
            name for name, ok in (("onnxruntime CUDA provider", has_cuda_provider), ("faiss GPU", gpus > 0)) if not ok
        ]
        placement = Placement("cpu", cpu.onnx_providers, f"no {' and no '.join(missing)}")
        if requested == "cuda":
            raise RuntimeError(f"EBR_DEVICE=cuda but there is {placement.reason}")
    log.info("device_chosen", device=placement.device, requested=requested, reason=placement.reason)
    return placement
