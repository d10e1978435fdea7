"""The FastAPI app: routes and the lifespan that owns Redis, the holder, the watcher and the batcher."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaValidator
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.manifest import FeatureSpec
from index.store import LocalStore
from service.batching import Batcher
from service.devices import Placement, choose_placement
from service.errors import (
    STATUS,
    BadRequestBodyError,
    BodyTooLargeError,
    NotReadyError,
    UnsupportedMediaTypeError,
    error_response,
    handlers,
    json_response,
)
from service.holder import LoadInProgressError, SnapshotHolder
from service.logs import REQUEST_ID, configure_logging
from service.metrics import Metrics
from service.recall_monitor import RecallMonitor
from service.requests import (
    ReloadRequest,
    RetrieveResponse,
    SnapshotInfo,
    accepting_validator,
    features_json_schema,
    retrieve_request_model,
)
from service.settings import Settings
from service.snapshot import Snapshot
from service.validation import Encoded, validate_features
from service.watcher import Watcher

log = structlog.get_logger(__name__)
# Module level: FastAPI resolves the string annotations of dependencies against module globals.
BEARER = HTTPBearer(auto_error=False)
# Candidate ids are int64: an excluded id outside that range matches no candidate, so it is dropped.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NO_EXCLUSIONS: frozenset[int] = frozenset()


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


class RequestClock:
    """Request ids, the Server-Timing total and the request-seconds metric, for both paths a request takes."""

    def __init__(self, metrics: Metrics) -> None:
        self.histogram = metrics.request_seconds
        self.prefix = f"{os.getpid():x}-"
        self.counter = itertools.count()
        # prometheus-client looks a labelled child up under a lock on every call; the few (route, status)
        # pairs a service answers are kept here instead.
        self.children: dict[tuple[str, int], Any] = {}

    def request_id(self, scope: Scope) -> str:
        return _header(scope, b"x-request-id") or f"{self.prefix}{next(self.counter):x}"

    @staticmethod
    def headers(request_id: str, started: float) -> list[tuple[bytes, bytes]]:
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [(b"x-request-id", request_id.encode()), (b"server-timing", f"total;dur={elapsed_ms:.2f}".encode())]

    def observe(self, route: str, status: int, started: float) -> None:
        child = self.children.get((route, status))
        if child is None:
            child = self.children[(route, status)] = self.histogram.labels(route=route, status=str(status))
        child.observe(time.perf_counter() - started)


class TimingMiddleware:
    """The clock around every route but the fast path, without Starlette's slower middleware."""

    def __init__(self, app: ASGIApp, clock: RequestClock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.clock.request_id(scope)
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *self.clock.headers(request_id, started)]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)
            self.clock.observe(getattr(scope.get("route"), "path", "unmatched"), status, started)


class RetrieveFastPath:
    """`POST /v1/retrieve` straight to its handler, past FastAPI's and Starlette's per-request objects.

    The route stays registered with FastAPI, so the OpenAPI schema documents it; only the hot path skips
    machinery that costs more per request than the tower and the search do. It keeps its own clock, so a
    request passes one wrapper, not two; every other request goes on to `rest`.
    """

    def __init__(
        self,
        app: FastAPI,
        rest: ASGIApp,
        clock: RequestClock,
        path: str,
        answer: Callable[[Runtime, bytes], Awaitable[tuple[bytes, dict[str, str]]]],
    ) -> None:
        self.app = app
        self.rest = rest
        self.clock = clock
        self.path = path
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.rest(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.clock.request_id(scope)
        token = REQUEST_ID.set(request_id)
        status = 499  # the client went away before an answer: nginx's code for it
        try:
            status, payload, headers = await self.respond(scope, receive)
            headers.extend(self.clock.headers(request_id, started))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        except ClientDisconnect:
            return
        finally:
            REQUEST_ID.reset(token)
            self.clock.observe(self.path, status, started)

    async def respond(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        runtime: Runtime = self.app.state.runtime
        try:
            check_body_headers(
                _header(scope, b"content-type") or "",
                _header(scope, b"content-length"),
                runtime.settings.max_body_bytes,
            )
            payload, headers = await self.answer(runtime, await read_body(receive, runtime.settings.max_body_bytes))
        except tuple(STATUS) as e:
            error = error_response(e)
            return error.status_code, bytes(error.body), list(error.raw_headers)
        except ClientDisconnect:
            raise
        except Exception:
            log.exception("retrieve_failed")
            error = json_response({"detail": "internal error"}, 500)
            return 500, bytes(error.body), list(error.raw_headers)
        return (
            200,
            payload,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in headers.items()),
            ],
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))[:128]
    return None


def check_body_headers(content_type: str, declared_length: str | None, limit: int) -> None:
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(f"expected Content-Type application/json, got {content_type!r}")
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLargeError(f"body of {declared_length} bytes exceeds the {limit}-byte limit")


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_body(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise BadRequestBodyError(
            [
                {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in e.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None


def create_app(settings: Settings) -> ASGIApp:
    configure_logging(settings.log_level)
    metrics = Metrics()
    retrieve_model = retrieve_request_model(settings.k_default, settings.k_max, settings.max_exclude)

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
            metrics,
            monitor,
            settings.threads,
            settings.compute_on_loop,
        )
        runtime = Runtime(settings, metrics, placement, holder, batcher, watcher)
        app.state.runtime = runtime
        restore = _drain_on_sigterm(runtime, asyncio.get_running_loop(), settings.drain_seconds)
        tasks = [
            asyncio.create_task(watcher.run_follower(), name="follower"),
            asyncio.create_task(watcher.run_loader(), name="loader"),
            asyncio.create_task(batcher.run(), name="batcher"),
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
                "content": {"application/json": {"schema": retrieve_model.model_json_schema()}},
            }
        },
        responses={413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
    )
    async def retrieve(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        check_body_headers(content_type, request.headers.get("content-length"), settings.max_body_bytes)
        payload, headers = await answer(runtime_of(request), await read_body(request.receive, settings.max_body_bytes))
        return Response(payload, 200, headers=headers, media_type="application/json")

    accepting: dict[FeatureSpec, SchemaValidator] = {}

    def parse_request(spec: FeatureSpec, body_bytes: bytes) -> tuple[Encoded, int, list[int]]:
        """The strict one-pass validator first; what it refuses, the full path parses or names the mistake of."""
        validator = accepting.get(spec)
        if validator is None:
            validator = accepting[spec] = accepting_validator(
                spec, settings.k_default, settings.k_max, settings.max_exclude
            )
        try:
            parsed = validator.validate_json(body_bytes)
            return parsed["features"], parsed["k"], parsed["exclude_ids"]
        except ValidationError:
            body = parse_body(retrieve_model, body_bytes)
            return validate_features(spec, body.features), body.k, body.exclude_ids

    async def answer(runtime: Runtime, body_bytes: bytes) -> tuple[bytes, dict[str, str]]:
        """The retrieval itself, shared by the FastAPI route (for the schema) and the fast path."""
        snapshot = runtime.holder.current
        if snapshot is None:
            parse_body(retrieve_model, body_bytes)  # a malformed body is the client's mistake, ready or not
            raise NotReadyError("no snapshot is serving yet")
        features, k, exclude_ids = parse_request(snapshot.manifest.feature_spec, body_bytes)
        result = await runtime.batcher.submit(
            snapshot,
            features,
            k,
            frozenset(i for i in exclude_ids if INT64_MIN <= i <= INT64_MAX) if exclude_ids else NO_EXCLUSIONS,
            settings.request_timeout_ms / 1000,
        )
        timings = result.timings
        payload = orjson.dumps(
            {"ids": result.hits.ids, "scores": result.hits.scores, "snapshot": snapshot.version},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return payload, {
            "X-Snapshot-Version": snapshot.version,
            "X-Batch-Size": str(result.batch_size),
            "Server-Timing": f"tower;dur={timings.tower * 1000:.2f}, search;dur={timings.search * 1000:.2f}",
        }

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
    return RetrieveFastPath(app, TimingMiddleware(app, clock), clock, "/v1/retrieve", answer)


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
