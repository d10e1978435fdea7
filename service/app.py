"""The FastAPI app: routes and the lifespan that owns Redis, the holder, the watcher and the batcher."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import redis.asyncio as aioredis
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp

from index.store import LocalStore
from service.batching import Batcher
from service.devices import Placement, choose_placement
from service.errors import NotReadyError, handlers, json_response
from service.holder import LoadInProgressError, SnapshotHolder
from service.logs import configure_logging
from service.metrics import Metrics
from service.recall_monitor import RecallMonitor
from service.requests import ReloadRequest, RetrieveResponse, SnapshotInfo, features_json_schema
from service.retrieve import RequestClock, RetrieveASGI, Retriever, TimingMiddleware, reply_to
from service.settings import Settings
from service.snapshot import Snapshot
from service.watcher import Watcher

log = structlog.get_logger(__name__)
# Module level: FastAPI resolves the string annotations of dependencies against module globals.
BEARER = HTTPBearer(auto_error=False)


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    placement: Placement
    holder: SnapshotHolder
    batcher: Batcher
    watcher: Watcher
    draining: bool = False


def snapshot_info(snapshot: Snapshot) -> dict[str, Any]:
    m = snapshot.manifest
    return SnapshotInfo(
        version=m.version,
        created_at=m.created_at,
        dim=m.dim,
        num_candidates=m.num_candidates,
        index_factory=m.index_factory,
        device=snapshot.placement.device,
        search_defaults=m.search_defaults.model_dump(),
        feature_spec=m.feature_spec.model_dump(),
        build_report=m.build_report.model_dump(),
        gate=snapshot.gate,
    ).model_dump()


def create_app(settings: Settings) -> ASGIApp:
    configure_logging(settings.log_level)
    metrics = Metrics()
    retriever = Retriever(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = LocalStore(settings.store)
        placement = choose_placement(settings.device)
        client = (
            aioredis.Redis.from_url(
                settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=5
            )
            if settings.redis_url
            else None
        )
        holder = SnapshotHolder(
            store,
            placement,
            metrics,
            settings.threads,
            settings.quality_gate_recall,
            memory_limit_bytes=settings.memory_limit_bytes,
            unload_first_when_tight=settings.unload_first_when_tight,
            mmap_index=settings.mmap_index,
            load_cpu_share=settings.load_cpu_share,
            storage_options={"client_kwargs": {"endpoint_url": settings.s3_endpoint_url}}
            if settings.s3_endpoint_url
            else None,
        )
        watcher = Watcher(holder, store, client, settings.redis_prefix, settings.replica_id, settings.poll_interval_s)
        holder.on_change = watcher.report_soon
        monitor = RecallMonitor(metrics, settings.recall_sample_rate, settings.recall_min_interval_s)
        batcher = Batcher(
            settings.max_batch_size,
            settings.max_batch_wait_ms / 1000,
            settings.max_queue,
            settings.request_timeout_ms / 1000,
            metrics,
            monitor,
            settings.threads,
            settings.compute_on_loop,
        )
        runtime = Runtime(settings, metrics, placement, holder, batcher, watcher)
        app.state.runtime = runtime
        retriever.attach(holder, batcher)
        restore = _drain_on_sigterm(runtime, asyncio.get_running_loop(), settings.drain_seconds)
        tasks = [
            asyncio.create_task(watcher.run_follower(), name="follower"),
            asyncio.create_task(watcher.run_loader(), name="loader"),
        ]
        log.info("started", replica=settings.replica_id, store=str(store.root), redis=bool(client))
        try:
            yield
        finally:
            restore()
            watcher.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await watcher.report("stopped")
            retriever.attach(None, None)
            batcher.close()
            monitor.close()
            holder.close()
            metrics.close()
            if client is not None:
                await client.aclose()

    app = FastAPI(
        title="ebr",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers=handlers(),  # type: ignore[arg-type]
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    def runtime_of(request: Request) -> Runtime:
        return request.app.state.runtime

    @app.post(
        "/v1/retrieve",
        response_model=RetrieveResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": retriever.model.model_json_schema()}},
            }
        },
        responses={413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
    )
    async def retrieve(request: Request) -> Response:
        """Reached only where the app is mounted without its RetrieveASGI wrapper; the same endpoint."""
        reply = await reply_to(retriever, request.scope, request.receive)
        return Response(reply.body, reply.status, headers={k.decode(): v.decode() for k, v in reply.headers})

    @app.get("/livez")
    async def livez() -> Response:
        return json_response({"status": "alive"})

    @app.get("/readyz", responses={503: {}})
    async def readyz(request: Request) -> Response:
        runtime = runtime_of(request)
        snapshot = runtime.holder.current
        if runtime.draining:
            return json_response({"status": "draining"}, 503)
        if snapshot is None:
            return json_response({"status": "starting", "loading": runtime.holder.loading}, 503)
        return json_response({"status": "ready", "snapshot": snapshot.version})

    @app.get("/v1/snapshot", response_model=SnapshotInfo, responses={503: {}})
    async def snapshot_route(request: Request) -> Response:
        snapshot = runtime_of(request).holder.current
        if snapshot is None:
            raise NotReadyError("no snapshot is serving yet")
        return json_response(snapshot_info(snapshot))

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_route() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    if settings.admin_token is not None:
        app.include_router(admin_router(settings.admin_token.get_secret_value(), runtime_of))

    def openapi() -> dict[str, Any]:
        """The schema, with `features` described by the serving snapshot's spec (it changes with swaps)."""
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        runtime: Runtime | None = getattr(app.state, "runtime", None)
        snapshot = runtime.holder.current if runtime else None
        if snapshot is not None:
            body = schema["paths"]["/v1/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            body["properties"]["features"] = features_json_schema(snapshot.manifest.feature_spec)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    clock = RequestClock(metrics)
    return RetrieveASGI(app, TimingMiddleware(app, clock), clock, retriever)


def admin_router(token: str, runtime_of: Callable[[Request], Runtime]) -> APIRouter:
    expected = token.encode()

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})

    router = APIRouter(
        prefix="/admin", dependencies=[Depends(authorised)], responses={401: {"description": "no valid token"}}
    )

    @router.get("/status")
    async def status(request: Request) -> Response:
        runtime = runtime_of(request)
        holder, watcher = runtime.holder, runtime.watcher
        fleet = await watcher.fleet()
        published = watcher.wanted.version if watcher.wanted else None
        failure = holder.last_failure
        return json_response(
            {
                "replica": runtime.settings.replica_id,
                "device": runtime.placement.device,
                "serving": snapshot_info(holder.current) if holder.current else None,
                "previous": holder.previous_version,
                "loading": holder.loading,
                "last_failure": failure.__dict__ if failure else None,
                "watcher": watcher.status(),
                "published": published,
                "fleet": fleet,
                "fleet_serving_published": sum(
                    1 for r in fleet.values() if isinstance(r, dict) and r.get("version") == published and r.get("live")
                ),
            }
        )

    @router.post("/reload", responses={409: {}, 422: {}})
    async def reload(request: Request, body: ReloadRequest | None = None) -> Response:
        runtime = runtime_of(request)
        holder, watcher = runtime.holder, runtime.watcher
        if holder.busy:
            raise LoadInProgressError(f"a load of {holder.loading} is in progress")
        if body is not None and body.version is not None:
            snapshot = await holder.load(body.version, wait=False)
            watcher.pin(body.version)
        else:
            watcher.unpin()
            pointer = watcher.wanted
            if pointer is None:
                raise NotReadyError("no published pointer is known")
            snapshot = await holder.load(pointer.version, wait=False)
        return json_response({"serving": snapshot.version, "pinned": watcher.pinned})

    @router.post("/rollback", responses={409: {}, 422: {}})
    async def rollback(request: Request) -> Response:
        runtime = runtime_of(request)
        holder, watcher = runtime.holder, runtime.watcher
        previous = holder.previous_version
        if previous is None:
            raise HTTPException(409, "there is no previous version to roll back to")
        snapshot = await holder.load(previous, wait=False)
        watcher.pin(previous)
        return json_response({"serving": snapshot.version, "pinned": watcher.pinned})

    return router


def _drain_on_sigterm(runtime: Runtime, loop: asyncio.AbstractEventLoop, drain_seconds: float) -> Callable[[], None]:
    """Turn readiness off as soon as SIGTERM arrives; after `drain_seconds` hand it to uvicorn's handler.

    The delay lets load balancers see /readyz fail and stop sending before uvicorn stops accepting; uvicorn
    then lets requests in flight finish within its graceful-shutdown timeout.
    """
    with contextlib.suppress(ValueError):
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            if runtime.draining and callable(previous):
                previous(signum, frame)
                return
            runtime.draining = True
            log.info("draining", seconds=drain_seconds)
            if callable(previous):
                loop.call_soon_threadsafe(loop.call_later, drain_seconds, previous, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

        def restore() -> None:
            signal.signal(signal.SIGTERM, previous)

        return restore
    return lambda: None


def app_from_environment() -> ASGIApp:
    """The uvicorn factory: settings are read when a worker starts, never at import."""
    return create_app(Settings())
