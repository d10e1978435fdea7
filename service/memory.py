"""How much memory a new snapshot may take: the cgroup's limit when there is one, else MemAvailable."""

from __future__ import annotations

from pathlib import Path

import psutil

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
# A loaded bundle takes about its files' size (index, tower, ids) plus allocator and ONNX Runtime slack.
RESIDENT_OVERHEAD = 1.2


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_headroom() -> int | None:
    """Bytes left under this cgroup's memory limit, or None when no limit applies."""
    for limit_file, usage_file in (
        (CGROUP_V2 / "memory.max", CGROUP_V2 / "memory.current"),
        (CGROUP_V1 / "memory.limit_in_bytes", CGROUP_V1 / "memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(0, limit - usage)
    return None


def available_bytes() -> int:
    system = int(psutil.virtual_memory().available)
    cgroup = cgroup_headroom()
    return system if cgroup is None else min(system, cgroup)


def expected_resident_bytes(file_sizes: list[int]) -> int:
    return int(sum(file_sizes) * RESIDENT_OVERHEAD)


def gpu_free_bytes(device: int = 0) -> int | None:
    """Free memory on the GPU through NVML (nvidia-ml-py, in the gpu extra), or None where it can't be read."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device)).free)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
