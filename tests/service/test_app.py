"""The HTTP API on a tiny real app: real bundles, ONNX Runtime and FAISS, driven through its lifespan.

Each API test runs twice: through ASGI (Starlette's test client, as any ASGI server would call the app) and
over loopback against a real uvicorn with ebr's protocol, where `POST /v1/retrieve` takes the direct route.
Both must answer alike.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import running

GOOD = {"region": 2, "activity": 0.3, "history": [5, 17, 33]}


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "snapshot never became ready"
        time.sleep(0.05)


@contextmanager
def served(settings: Settings, transport: str) -> Iterator[httpx.Client]:
    """A client of a fresh app: in process through ASGI, or over loopback to a real uvicorn (direct route)."""
    app = create_app(settings)
    if transport == "asgi":
        with TestClient(app) as client:
            yield client
        return
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(params=["asgi", "direct"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(store: Path, transport: str) -> Iterator[httpx.Client]:
    settings = Settings(store=store, device="cpu", k_max=200, admin_token="s3cret", poll_interval_s=0.2)
    with served(settings, transport) as client:
        wait_ready(client)
        yield client


def test_retrieve_returns_unique_ids_with_descending_scores(client: httpx.Client) -> None:
    response = client.post("/v1/retrieve", json={"features": GOOD, "k": 50})
    assert response.status_code == 200
    body = response.json()
    assert len(body["ids"]) == 50 == len(set(body["ids"]))
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert response.headers["x-snapshot-version"] == body["snapshot"] == "20260101T000000Z"
    assert "x-request-id" in response.headers
    timing = response.headers["server-timing"]
    assert "tower;dur=" in timing and "search;dur=" in timing and "total;dur=" in timing
    assert int(response.headers["x-batch-size"]) >= 1


def test_excluded_ids_are_absent_and_k_is_still_full(client: httpx.Client) -> None:
    first = client.post("/v1/retrieve", json={"features": GOOD, "k": 20}).json()["ids"]
    response = client.post("/v1/retrieve", json={"features": GOOD, "k": 20, "exclude_ids": first[:15]})
    ids = response.json()["ids"]
    assert len(ids) == 20 == len(set(ids))
    assert not set(ids) & set(first[:15])
    kept = [i for i in first[15:] if i in ids]
    assert len(kept) >= 3
    assert kept == sorted(kept, key=ids.index)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"features": {**GOOD, "colour": 1}}, ["body", "features", "colour"]),
        ({"features": {**GOOD, "region": "north"}}, ["body", "features", "region"]),
        ({"features": {**GOOD, "region": 10_000}}, ["body", "features", "region"]),
        ({"features": {**GOOD, "history": [1, 4000]}}, ["body", "features", "history", 1]),
        ({"features": GOOD, "k": 0}, ["body", "k"]),
        ({"features": GOOD, "k": 201}, ["body", "k"]),
        ({"features": GOOD, "exclude_ids": ["a"]}, ["body", "exclude_ids", 0]),
        ({"features": GOOD, "extra": 1}, ["body", "extra"]),
        ({"k": 5}, ["body", "features"]),
    ],
)
def test_bad_requests_get_422_naming_the_field(
    client: httpx.Client, body: dict[str, object], loc: list[object]
) -> None:
    response = client.post("/v1/retrieve", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_requests_the_strict_pass_refuses_but_the_schema_allows_get_the_same_answer(client: httpx.Client) -> None:
    plain = client.post("/v1/retrieve", json={"features": GOOD, "k": 10}).json()
    loose = {"region": float(GOOD["region"]), "activity": GOOD["activity"], "history": [5.0, 17, 33.0]}
    response = client.post("/v1/retrieve", json={"features": loose, "k": "10"})
    assert response.status_code == 200
    assert response.json() == plain


def test_excluded_ids_beyond_int64_exclude_nothing(client: httpx.Client) -> None:
    plain = client.post("/v1/retrieve", json={"features": GOOD, "k": 10}).json()["ids"]
    response = client.post("/v1/retrieve", json={"features": GOOD, "k": 10, "exclude_ids": [2**80, -(2**70)]})
    assert response.status_code == 200
    assert response.json()["ids"] == plain


def test_non_finite_numbers_get_422(client: httpx.Client) -> None:
    for raw in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"features": {"region": 1, "activity": ' + raw + b"}}"
        response = client.post("/v1/retrieve", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "features", "activity"]


def test_malformed_json_gets_422_not_500(client: httpx.Client) -> None:
    response = client.post("/v1/retrieve", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_wrong_content_type_gets_415(client: httpx.Client) -> None:
    response = client.post("/v1/retrieve", content=b"region=1", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_oversized_body_gets_413(client: httpx.Client) -> None:
    body = b'{"features": {"region": 1}, "exclude_ids": [' + b"1," * 600_000 + b"1]}"
    response = client.post("/v1/retrieve", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_health_snapshot_and_metrics(client: httpx.Client) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready", "snapshot": "20260101T000000Z"}
    info = client.get("/v1/snapshot").json()
    assert info["version"] == "20260101T000000Z"
    assert info["gate"]["golden_recall"] >= 0.8
    client.post("/v1/retrieve", json={"features": GOOD})
    metrics = client.get("/metrics").text
    assert 'ebr_serving_info{version="20260101T000000Z"} 1.0' in metrics
    assert 'ebr_request_seconds_count{route="/v1/retrieve",status="200"}' in metrics


def test_refused_requests_carry_a_request_id_and_are_counted_by_status(client: httpx.Client) -> None:
    response = client.post(
        "/v1/retrieve", json={"features": {**GOOD, "region": 10**6}}, headers={"X-Request-Id": "trace-7"}
    )
    assert response.status_code == 422
    assert response.headers["x-request-id"] == "trace-7"
    assert "total;dur=" in response.headers["server-timing"]
    client.get("/livez")
    metrics = client.get("/metrics").text
    assert 'ebr_request_seconds_count{route="/v1/retrieve",status="422"} 1.0' in metrics
    assert 'ebr_request_seconds_count{route="/livez",status="200"} 1.0' in metrics


def test_a_client_gone_before_its_body_is_counted_as_499_and_sent_nothing(store: Path) -> None:
    app = create_app(Settings(store=store, device="cpu"))
    sent: list[object] = []

    async def gone() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        sent.append(message)

    with TestClient(app) as client:
        wait_ready(client)
        headers = [(b"content-type", b"application/json")]
        scope = {"type": "http", "method": "POST", "path": "/v1/retrieve", "headers": headers}
        client.portal.call(app, scope, gone, send)  # type: ignore[union-attr]
        metrics = client.get("/metrics").text
    assert sent == []
    assert 'ebr_request_seconds_count{route="/v1/retrieve",status="499"} 1.0' in metrics


def test_admin_needs_the_bearer_token(client: httpx.Client) -> None:
    assert client.get("/admin/status").status_code == 401
    assert client.get("/admin/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    status = client.get("/admin/status", headers={"Authorization": "Bearer s3cret"}).json()
    assert status["serving"]["version"] == "20260101T000000Z"


def test_admin_is_absent_without_a_token(store: Path) -> None:
    with TestClient(create_app(Settings(store=store, device="cpu"))) as client:
        assert client.get("/admin/status").status_code == 404


def test_not_ready_without_a_snapshot(tmp_path: Path, transport: str) -> None:
    with served(Settings(store=tmp_path, device="cpu"), transport) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
        response = client.post("/v1/retrieve", json={"features": GOOD})
        assert response.status_code == 503
        assert "Retry-After" in response.headers


def test_a_client_gone_before_its_answer_on_the_direct_route_is_counted_as_499(store: Path) -> None:
    # The batch waits half a second to fill, so the client is gone before its answer is ready.
    settings = Settings(store=store, device="cpu", max_batch_wait_ms=500)
    with served(settings, "direct") as client:
        wait_ready(client)
        host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
        body = b'{"features": {"region": 2}}'
        head = f"POST /v1/retrieve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(head.encode() + b"\r\n\r\n" + body)
        time.sleep(0.8)
        metrics = client.get("/metrics").text
    assert 'ebr_request_seconds_count{route="/v1/retrieve",status="499"} 1.0' in metrics


def test_the_direct_route_serves_what_uvicorn_hands_it(store: Path) -> None:
    """Keep-alive, a chunked body and a request id of the client's own, over a real socket."""
    settings = Settings(store=store, device="cpu")
    with served(settings, "direct") as client:
        wait_ready(client)
        plain = client.post("/v1/retrieve", json={"features": GOOD, "k": 10})
        chunked = client.post(
            "/v1/retrieve",
            content=iter([b'{"features": {"region": 2, "activity": 0.3, ', b'"history": [5, 17, 33]}, "k": 10}']),
            headers={"Content-Type": "application/json", "X-Request-Id": "mine-1"},
        )
        odd_id = client.post("/v1/retrieve", json={"features": GOOD, "k": 10}, headers={"X-Request-Id": "a\tb"})
    assert chunked.status_code == plain.status_code == 200
    assert chunked.json() == plain.json()
    assert chunked.headers["x-request-id"] == "mine-1"
    assert odd_id.headers["x-request-id"] not in ("a\tb", plain.headers["x-request-id"])
