"""ebr's HTTP protocol (one write per response, direct routes) on real loopback sockets and a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service.http import CoalescingTransport, DirectRequest, direct_routes_of
from tests.conftest import running


async def connected_pair() -> tuple[asyncio.Transport, asyncio.StreamReader, list[bytes]]:
    """A real client transport to a real loopback server, with each write it makes to its socket recorded."""
    reader_ready: asyncio.Future[asyncio.StreamReader] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reader_ready.set_result(reader)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, "127.0.0.1", port)
    writes: list[bytes] = []
    real_write = transport.write

    def recording_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = recording_write  # type: ignore[method-assign]
    return transport, await reader_ready, writes  # type: ignore[return-value]


def test_writes_of_one_loop_turn_reach_the_socket_as_one() -> None:
    async def scenario() -> tuple[list[bytes], bytes]:
        transport, reader, writes = await connected_pair()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        coalescing.write(b"hello")
        assert writes == []
        await asyncio.sleep(0)
        coalescing.write(b"next turn")
        await asyncio.sleep(0)
        coalescing.close()
        return writes, await reader.read()

    writes, received = asyncio.run(scenario())
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"next turn"]
    assert received == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhellonext turn"


def test_close_sends_what_is_pending_first() -> None:
    async def scenario() -> tuple[list[bytes], bytes, int]:
        transport, reader, writes = await connected_pair()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"last words")
        pending = coalescing.get_write_buffer_size()
        coalescing.close()
        return writes, await reader.read(), pending

    writes, received, pending = asyncio.run(scenario())
    assert pending == len(b"last words")
    assert writes == [b"last words"]
    assert received == b"last words"


async def two_message_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request through ASGI, with its head and body in two messages; no direct routes."""
    if scope["type"] != "http":
        return
    body = scope["path"].encode() * 1000
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EchoRoute:
    """A direct route that answers on a later loop turn, as a batch does; a few bodies ask for odd behaviour."""

    max_body_bytes = 1000

    def __init__(self) -> None:
        self.seen: list[DirectRequest] = []

    def __call__(self, request: DirectRequest) -> None:
        self.seen.append(request)
        loop = asyncio.get_running_loop()
        if request.body is None:
            request.respond(413, [(b"content-type", b"text/plain")], b"too large")
        elif request.body == b"raise":
            raise RuntimeError("a bug in the route")
        elif request.body == b"slow":
            loop.call_later(0.3, request.respond, 200, [(b"x-route", b"direct")], b"direct:slow")
        else:
            loop.call_soon(request.respond, 200, [(b"x-route", b"direct")], b"direct:" + request.body)


class EchoApp:
    """ASGI answers `asgi:<method> <path> <body>`; POST /echo is also offered as a direct route."""

    def __init__(self) -> None:
        self.route = EchoRoute()
        self.direct_routes = {(b"POST", b"/echo"): self.route}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        answer = b"asgi:%s %s %s" % (scope["method"].encode(), scope["path"].encode(), body)
        headers = [(b"x-route", b"asgi"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture
def server_url() -> Iterator[str]:
    with running(two_message_app) as (url, _):
        yield url


@pytest.fixture
def echo() -> Iterator[tuple[str, uvicorn.Server, EchoApp]]:
    app = EchoApp()
    with running(app) as (url, server):
        yield url, server, app


def test_uvicorn_with_the_protocol_answers_many_requests_on_one_connection(server_url: str) -> None:
    with httpx.Client(base_url=server_url) as client:
        for path in ("/a", "/bb", "/ccc") * 20:
            response = client.get(path)
            assert response.status_code == 200
            assert response.content == path.encode() * 1000


def test_a_direct_route_answers_on_a_kept_alive_connection_and_other_requests_take_asgi(
    echo: tuple[str, uvicorn.Server, EchoApp],
) -> None:
    url, _, app = echo
    with httpx.Client(base_url=url) as client:
        for n in range(30):
            response = client.post("/echo", content=b"n%d" % n)
            assert (response.status_code, response.content) == (200, b"direct:n%d" % n)
            assert response.headers["content-length"] == str(len(response.content))
            assert "date" in response.headers  # uvicorn's default headers go out on the direct route too
        assert client.post("/echo?x=1", content=b"q").content == b"asgi:POST /echo q"
        assert client.put("/echo", content=b"p").content == b"asgi:PUT /echo p"
        assert client.post("/other", content=b"o").content == b"asgi:POST /other o"
    assert len(app.route.seen) == 30


def test_a_chunked_body_reaches_the_route_whole(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with httpx.Client(base_url=url) as client:
        response = client.post("/echo", content=iter([b"one-", b"two-", b"three"]))
    assert response.content == b"direct:one-two-three"


def raw_request(path: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: test", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw socket (content-length framed); what follows it stays in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    size = int(headers["content-length"])
    del buffer[: len(head) + 4]
    while len(buffer) < size:
        buffer += sock.recv(65536)
    body = bytes(buffer[:size])
    del buffer[:size]
    return int(lines[0].split()[1]), headers, body


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_pipelined_requests_are_answered_in_order(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with connect(url) as sock:
        sock.sendall(raw_request("/echo", b"first") + raw_request("/echo", b"second") + raw_request("/x", b"third"))
        buffer = bytearray()
        bodies = [read_response(sock, buffer)[2] for _ in range(3)]
    # The second waits behind the first, so it takes uvicorn's pipelining (ASGI) rather than the direct route.
    assert bodies == [b"direct:first", b"asgi:POST /echo second", b"asgi:POST /x third"]


def test_expect_100_continue_is_left_to_uvicorn(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with connect(url) as sock:
        sock.sendall(
            raw_request("/echo", b"", "Expect: 100-continue").replace(b"Content-Length: 0", b"Content-Length: 4")
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"body")
        assert read_response(sock, bytearray())[2] == b"asgi:POST /echo body"


def test_http_1_0_gets_its_answer_and_the_connection_closes(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with connect(url) as sock:
        sock.sendall(raw_request("/echo", b"old", version="1.0"))
        buffer = bytearray()
        _, headers, body = read_response(sock, buffer)
        assert (body, headers["connection"]) == (b"direct:old", "close")
        assert sock.recv(1024) == b""


def test_an_oversized_body_is_refused_before_it_is_read_and_the_connection_goes_on(
    echo: tuple[str, uvicorn.Server, EchoApp],
) -> None:
    url, _, app = echo
    with connect(url) as sock:
        buffer = bytearray()
        sock.sendall(raw_request("/echo", b"").replace(b"Content-Length: 0", b"Content-Length: 5000"))
        status, _, body = read_response(sock, buffer)
        assert (status, body) == (413, b"too large")
        sock.sendall(b"x" * 5000 + raw_request("/echo", b"after"))
        assert read_response(sock, buffer)[2] == b"direct:after"
    assert app.route.seen[0].body is None


def test_an_oversized_chunked_body_is_refused(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with httpx.Client(base_url=url) as client:
        response = client.post("/echo", content=iter([b"x" * 600, b"y" * 600]))
        assert response.status_code == 413
        assert client.post("/echo", content=b"next").content == b"direct:next"


def test_a_failing_route_answers_500_and_the_connection_goes_on(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, _ = echo
    with httpx.Client(base_url=url) as client:
        assert client.post("/echo", content=b"raise").status_code == 500
        assert client.post("/echo", content=b"fine").content == b"direct:fine"


def test_an_answer_after_the_client_left_is_dropped(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, _, app = echo
    with connect(url) as sock:
        sock.sendall(raw_request("/echo", b"slow"))
        time.sleep(0.1)
    time.sleep(0.4)
    gone = app.route.seen[-1]
    assert gone.disconnected and not gone.response_complete
    with httpx.Client(base_url=url) as client:
        assert client.post("/echo", content=b"still").content == b"direct:still"


def test_graceful_shutdown_answers_a_request_in_flight_then_closes(echo: tuple[str, uvicorn.Server, EchoApp]) -> None:
    url, server, _ = echo
    with connect(url) as sock:
        sock.sendall(raw_request("/echo", b"slow"))
        time.sleep(0.1)
        server.should_exit = True
        buffer = bytearray()
        _, headers, body = read_response(sock, buffer)
        assert (body, headers["connection"]) == (b"direct:slow", "close")
        assert sock.recv(1024) == b""


def test_direct_routes_are_found_under_uvicorns_proxy_headers_only() -> None:
    app = EchoApp()

    class Authenticating:
        """Any other wrapper: a direct route would skip what it does, so its routes must stay hidden."""

        def __init__(self, inner: EchoApp) -> None:
            self.app = inner

    assert direct_routes_of(app) == app.direct_routes
    assert direct_routes_of(ProxyHeadersMiddleware(app)) == app.direct_routes  # type: ignore[arg-type]
    assert direct_routes_of(Authenticating(app)) == {}
    assert direct_routes_of(two_message_app) == {}
