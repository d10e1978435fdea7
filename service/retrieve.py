"""`POST /v1/retrieve`: from a request's content type and body to its reply, on both ways a request arrives.

`Retriever` checks, validates and queues a request and hands its reply to a callback: at once for a refusal,
after its batch for an answer. `ebr serve` takes requests on the direct route (`DirectRetrieve`, called from
the HTTP protocol's parser callbacks, with no task per request); other servers, test clients and the few
requests the direct route leaves to ASGI come through `RetrieveASGI`. Both give the same replies, request
ids, timing headers and metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import structlog
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from pydantic_core import SchemaValidator
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.manifest import FeatureSpec
from service.batching import Answer, Batcher
from service.errors import (
    STATUS,
    BadRequestBodyError,
    BodyTooLargeError,
    NotReadyError,
    UnsupportedMediaTypeError,
    error_parts,
)
from service.holder import SnapshotHolder
from service.http import DirectRequest, Headers, header_value
from service.logs import REQUEST_ID
from service.metrics import Metrics
from service.requests import accepting_validator, retrieve_request_model
from service.settings import Settings
from service.snapshot import Snapshot
from service.validation import Encoded, validate_features

log = structlog.get_logger(__name__)

PATH = "/v1/retrieve"
# Candidate ids are int64: an excluded id outside that range matches no candidate, so it is dropped.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NO_EXCLUSIONS: frozenset[int] = frozenset()
JSON_CONTENT: tuple[bytes, bytes] = (b"content-type", b"application/json")


class Reply(NamedTuple):
    """A whole response but its content length, which each transport adds."""

    status: int
    body: bytes
    headers: Headers


def error_reply(error: Exception) -> Reply:
    return Reply(*error_parts(error))


INTERNAL_ERROR = Reply(500, orjson.dumps({"detail": "internal error"}), [JSON_CONTENT])


class Retriever:
    """The endpoint's work, with the serving holder and batcher the lifespan attaches."""

    def __init__(self, settings: Settings) -> None:
        self.max_body_bytes = settings.max_body_bytes
        self.k_default, self.k_max, self.max_exclude = settings.k_default, settings.k_max, settings.max_exclude
        self.model = retrieve_request_model(settings.k_default, settings.k_max, settings.max_exclude)
        self.holder: SnapshotHolder | None = None
        self.batcher: Batcher | None = None
        self.accepting: dict[FeatureSpec, SchemaValidator] = {}
        self.last_spec: FeatureSpec | None = None
        self.last_validator: SchemaValidator | None = None

    def attach(self, holder: SnapshotHolder | None, batcher: Batcher | None) -> None:
        self.holder, self.batcher = holder, batcher

    def start(self, content_type: str | None, body: bytes | None, reply: Callable[[Reply], None]) -> None:
        """Answer one request through `reply`, called exactly once. `body` is None when it was over the limit."""
        try:
            refusal = self._queue(content_type, body, reply)
        except tuple(STATUS) as e:
            refusal = error_reply(e)
        except Exception:
            log.exception("retrieve_failed")
            refusal = INTERNAL_ERROR
        if refusal is not None:
            reply(refusal)

    def _queue(self, content_type: str | None, body: bytes | None, reply: Callable[[Reply], None]) -> Reply | None:
        if content_type is None or content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaTypeError(f"expected Content-Type application/json, got {content_type!r}")
        if body is None:
            raise BodyTooLargeError(f"body exceeds the {self.max_body_bytes}-byte limit")
        snapshot = self.holder.current if self.holder is not None else None
        if snapshot is None or self.batcher is None:
            parse_body(self.model, body)  # a malformed body is the client's mistake, ready or not
            raise NotReadyError("no snapshot is serving yet")
        features, k, exclude_ids = self.parse(snapshot.manifest.feature_spec, body)
        exclusions = frozenset(i for i in exclude_ids if INT64_MIN <= i <= INT64_MAX) if exclude_ids else NO_EXCLUSIONS
        self.batcher.enqueue(snapshot, features, k, exclusions, lambda result: reply(answered(snapshot, result)))
        return None

    def parse(self, spec: FeatureSpec, body: bytes) -> tuple[Encoded, int, list[int]]:
        """The strict one-pass validator first; what it refuses, the full path parses or names the mistake of."""
        validator = self.last_validator
        if spec is not self.last_spec or validator is None:
            # The dictionary compares specs by value, which hashes the whole spec: done once per snapshot.
            validator = self.accepting.get(spec)
            if validator is None:
                validator = self.accepting[spec] = accepting_validator(
                    spec, self.k_default, self.k_max, self.max_exclude
                )
            self.last_spec, self.last_validator = spec, validator
        try:
            parsed = validator.validate_json(body)
            return parsed["features"], parsed["k"], parsed["exclude_ids"]
        except ValidationError:
            request = parse_body(self.model, body)
            return validate_features(spec, request.features), request.k, request.exclude_ids


def answered(snapshot: Snapshot, result: Answer | Exception) -> Reply:
    if not isinstance(result, Answer):
        return error_reply(result) if type(result) in STATUS else INTERNAL_ERROR  # the batcher logged it
    timings = result.timings
    payload = orjson.dumps(
        {"ids": result.hits.ids, "scores": result.hits.scores, "snapshot": snapshot.version},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    headers = [
        JSON_CONTENT,
        (b"x-snapshot-version", snapshot.version.encode()),
        (b"x-batch-size", b"%d" % result.batch_size),
        (b"server-timing", b"tower;dur=%.2f, search;dur=%.2f" % (timings.tower * 1000, timings.search * 1000)),
    ]
    return Reply(200, payload, headers)


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


class RequestClock:
    """Request ids, the Server-Timing total and the request-seconds metric, for every way a request arrives."""

    def __init__(self, metrics: Metrics) -> None:
        self.histogram = metrics.request_seconds
        self.prefix = f"{os.getpid():x}-"
        self.counter = itertools.count()
        # prometheus-client looks a labelled child up under a lock on every call; the few (route, status)
        # pairs a service answers are kept here instead.
        self.children: dict[tuple[str, int], Any] = {}

    def request_id(self, given: str | None) -> str:
        """The client's X-Request-Id when it is a short printable ASCII string, else a new one."""
        if given and len(given) <= 128 and given.isascii() and given.isprintable():
            return given
        return f"{self.prefix}{next(self.counter):x}"

    @staticmethod
    def headers(request_id: str, started: float) -> Headers:
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [(b"x-request-id", request_id.encode()), (b"server-timing", b"total;dur=%.2f" % elapsed_ms)]

    def observe(self, route: str, status: int, started: float) -> None:
        child = self.children.get((route, status))
        if child is None:
            child = self.children[(route, status)] = self.histogram.labels(route=route, status=str(status))
        child.observe(time.perf_counter() - started)


class DirectRetrieve:
    """The direct route: `Retriever` called from the HTTP protocol's callbacks, the reply written in one go."""

    def __init__(self, retriever: Retriever, clock: RequestClock) -> None:
        self.retriever = retriever
        self.clock = clock
        self.max_body_bytes = retriever.max_body_bytes

    def __call__(self, request: DirectRequest) -> None:
        started = time.perf_counter()
        request_id = self.clock.request_id(request.header(b"x-request-id"))
        clock = self.clock

        def reply(result: Reply) -> None:
            request.respond(result.status, [*result.headers, *clock.headers(request_id, started)], result.body)
            clock.observe(PATH, 499 if request.disconnected else result.status, started)

        token = REQUEST_ID.set(request_id)
        try:
            self.retriever.start(request.header(b"content-type"), request.body, reply)
        finally:
            REQUEST_ID.reset(token)


class TimingMiddleware:
    """The clock around every ASGI route but retrieve's, without Starlette's slower middleware."""

    def __init__(self, app: ASGIApp, clock: RequestClock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.clock.request_id(header_value(scope["headers"], b"x-request-id"))
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


class RetrieveASGI:
    """`POST /v1/retrieve` through ASGI, straight to `Retriever`, past FastAPI's per-request objects.

    The route stays registered with FastAPI, so the OpenAPI schema documents it; every other request goes
    on to `rest`. The app's `direct_routes` offer the same endpoint to the HTTP protocol of `ebr serve`.
    """

    def __init__(self, app: FastAPI, rest: ASGIApp, clock: RequestClock, retriever: Retriever) -> None:
        self.app = app
        self.rest = rest
        self.clock = clock
        self.retriever = retriever
        self.direct_routes = {(b"POST", PATH.encode()): DirectRetrieve(retriever, clock)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.rest(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self.clock.request_id(header_value(scope["headers"], b"x-request-id"))
        token = REQUEST_ID.set(request_id)
        status = 499  # the client went away before an answer: nginx's code for it
        try:
            reply = await reply_to(self.retriever, scope, receive)
            status = reply.status
            headers = [
                *reply.headers,
                (b"content-length", b"%d" % len(reply.body)),
                *self.clock.headers(request_id, started),
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
        except ClientDisconnect:
            return
        finally:
            REQUEST_ID.reset(token)
            self.clock.observe(PATH, status, started)


async def reply_to(retriever: Retriever, scope: Scope, receive: Receive) -> Reply:
    declared = header_value(scope["headers"], b"content-length")
    oversized = declared is not None and declared.isdigit() and int(declared) > retriever.max_body_bytes
    body = None if oversized else await read_body(receive, retriever.max_body_bytes)
    replied: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def deliver(reply: Reply) -> None:
        if not replied.done():  # the request's task was cancelled: its client has gone
            replied.set_result(reply)

    retriever.start(header_value(scope["headers"], b"content-type"), body, deliver)
    return await replied


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
