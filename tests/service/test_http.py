"""The coalescing HTTP protocol, on real loopback sockets and a real uvicorn server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from service.http import HTTP_PROTOCOL, CoalescingTransport


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
    if scope["type"] != "http":
        return
    body = scope["path"].encode() * 1000
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server_url() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(two_message_app, host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_uvicorn_with_the_protocol_answers_many_requests_on_one_connection(server_url: str) -> None:
    with httpx.Client(base_url=server_url) as client:
        for path in ("/a", "/bb", "/ccc") * 20:
            response = client.get(path)
            assert response.status_code == 200
            assert response.content == path.encode() * 1000
