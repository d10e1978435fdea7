"""Service settings, from `EBR_*` environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EBR_", extra="ignore")

    store: Path = Field(Path(".ebr/store"), description="snapshot store directory")
    redis_url: str | None = Field(None, description="Redis for the pointer, events and fleet view")
    redis_prefix: str = Field("ebr:snapshot", description="prefix of the Redis keys and channel")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint for pointers whose URI is s3:// (credentials: AWS_* variables)"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin; admin is off without")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the tower and index run")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each its own replica")
    threads: int = Field(1, ge=1, description="ONNX Runtime and FAISS threads per worker")
    k_max: int = Field(1000, ge=1, description="largest k a request may ask for")
    k_default: int = Field(100, ge=1)
    max_exclude: int = Field(10_000, ge=0, description="most exclude_ids a request may carry")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_batch_size: int = Field(64, ge=1, description="requests run as one tower and search batch")
    max_batch_wait_ms: float = Field(
        0.0, ge=0, description="how long a batch waits to fill; 0: requests that arrive during a batch form the next"
    )
    compute_on_loop: bool = Field(
        True, description="run tower and search on the event loop's thread (about a core per worker), not a thread"
    )
    max_queue: int = Field(2048, ge=1, description="queued requests beyond this get a fast 429")
    request_timeout_ms: float = Field(2000, gt=0, description="a request not done by then gets 503")
    poll_interval_s: float = Field(5.0, gt=0, description="slow timer: re-read the pointer this often")
    quality_gate_recall: float = Field(0.8, ge=0, le=1, description="golden recall@K a snapshot must reach")
    memory_limit_bytes: int | None = Field(
        None, ge=0, description="memory a new snapshot may use beside the old one (default: cgroup or MemAvailable)"
    )
    unload_first_when_tight: bool = Field(
        False, description="when old and new cannot both fit: unload first, not ready in the gap, instead of refusing"
    )
    mmap_index: bool = Field(True, description="map the index's stored codes so workers share their pages")
    load_cpu_share: float = Field(
        0.25, gt=0, le=1, description="share of one core a snapshot's verification and checks take beside serving"
    )
    drain_seconds: float = Field(0.0, ge=0, description="after SIGTERM: not ready, but still serving, this long")
    recall_sample_rate: float = Field(
        0.001, ge=0, le=1, description="share of live queries re-run exhaustively for the online recall gauge"
    )
    recall_min_interval_s: float = Field(1.0, ge=0, description="at most one online recall check this often")
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    log_level: str = "info"
