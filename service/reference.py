"""The serving benchmark's comparison apps: a straightforward reference, a bare batching app, and the HTTP
floor that does no work.

The reference is what one would write first: FastAPI parses the body into a pydantic model, a synchronous
endpoint (so FastAPI runs it on its thread pool) runs one tower call and one search per request, and the
returned dict goes through FastAPI's default JSON encoding. It opens the same bundle as ebr, with the same
validation and the same search defaults, so both give the same answers. The floor reads the body and sends
a fixed answer of a typical size: no app can beat it with the same server and workers.

The bare app is the ceiling for ebr's design: on the same direct route, it batches concurrent requests into
one tower call and one search on the same snapshot code as ebr, and does nothing else (no validation,
deadline, backpressure, metrics, request id or timing header). What ebr does per request beyond it is what
those cost.

All are uvicorn factories configured from the environment, as `ebr serve` is.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import orjson
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from index.bundle import open_bundle
from index.search import search, search_parameters
from service.devices import choose_placement
from service.http import DirectRequest
from service.snapshot import load_snapshot
from service.validation import Encoded, FeatureError, absent_value, encode_batch, validate_features

BUNDLE_VARIABLE = "EBR_BENCH_BUNDLE"


class RetrieveBody(BaseModel):
    features: dict[str, Any]
    k: int = Field(100, ge=1, le=1000)
    exclude_ids: list[int] = []


def reference_app(bundle_path: Path, threads: int) -> FastAPI:
    faiss.omp_set_num_threads(threads)
    bundle = open_bundle(bundle_path, threads=threads)
    spec, manifest = bundle.manifest.feature_spec, bundle.manifest
    params = search_parameters(bundle.index, manifest.search_defaults)
    app = FastAPI(title="ebr reference")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "snapshot": manifest.version}

    @app.post("/v1/retrieve")
    def retrieve(body: RetrieveBody) -> dict[str, Any]:
        try:
            features = validate_features(spec, body.features)
        except FeatureError as e:
            raise HTTPException(422, [{"loc": list(e.loc), "msg": e.message, "type": e.kind}]) from None
        query = bundle.session.run([spec.output], encode_batch(spec, [features]))[0]
        fetch = min(manifest.num_candidates, body.k + len(body.exclude_ids))
        scores, rows = search(bundle.index, query, fetch, params)
        ids = bundle.candidate_ids[rows[0][rows[0] >= 0]]
        kept = ~np.isin(ids, body.exclude_ids)
        return {
            "ids": ids[kept][: body.k].tolist(),
            "scores": scores[0][rows[0] >= 0][kept][: body.k].tolist(),
            "snapshot": manifest.version,
        }

    return app


def reference_from_environment() -> FastAPI:
    return reference_app(Path(os.environ[BUNDLE_VARIABLE]), int(os.environ.get("EBR_THREADS", "1")))


def bare_app(bundle_path: Path, threads: int) -> Any:
    """Requests parsed with orjson and taken as valid, batched per event-loop turn, answered from numpy rows;
    on ebr's direct route under `ebr serve`'s protocol, as ebr is."""
    faiss.omp_set_num_threads(threads)
    snapshot = load_snapshot(bundle_path, choose_placement("cpu"), threads, mmap_index=True)
    spec = snapshot.manifest.feature_spec
    absent = {field.name: absent_value(field) for field in spec.fields}
    waiting: list[tuple[Encoded, int, Callable[[bytes], None]]] = []
    json_header = (b"content-type", b"application/json")

    def run_batch() -> None:
        batch = waiting[:]
        waiting.clear()
        queries = snapshot.embed([features for features, _, _ in batch])
        hits = snapshot.search(queries, [k for _, k, _ in batch], [frozenset()] * len(batch))
        for (_, _, deliver), found in zip(batch, hits, strict=True):
            answer = {"ids": found.ids, "scores": found.scores, "snapshot": snapshot.version}
            deliver(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))

    def queue(body: bytes, deliver: Callable[[bytes], None]) -> None:
        request = orjson.loads(body)
        if not waiting:
            asyncio.get_running_loop().call_soon(run_batch)
        waiting.append((absent | request["features"], request.get("k", 100), deliver))

    class Retrieve:
        max_body_bytes = 1 << 20

        def __call__(self, request: DirectRequest) -> None:
            queue(request.body or b"", lambda payload: request.respond(200, [json_header], payload))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["path"] == "/readyz":
            payload = orjson.dumps({"status": "ready", "snapshot": snapshot.version})
        else:
            answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            queue((await receive())["body"], answered.set_result)
            payload = await answered
        headers = [json_header, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    app.direct_routes = {(b"POST", b"/v1/retrieve"): Retrieve()}  # type: ignore[attr-defined]
    return app


def bare_from_environment() -> Any:
    return bare_app(Path(os.environ[BUNDLE_VARIABLE]), int(os.environ.get("EBR_THREADS", "1")))


async def _lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def floor_app(k: int = 100) -> Any:
    """A bare ASGI app: drain the request body, answer every path with the same bytes."""
    body = json.dumps({"ids": list(range(1_000_000, 1_000_000 + k)), "scores": [0.5] * k, "snapshot": "floor"})
    answer = body.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app
