"""uvicorn's httptools protocol with two changes: each response leaves in one write, and direct routes.

One write: uvicorn writes a response's head when the app sends `http.response.start` and its body on the
next message, each straight to the socket: two send() calls, and on loopback or a fast network two segments
the client wakes up for. Here every write made during one turn of the event loop is joined and sent once at
the end of that turn, so head and body go together; a streamed body still leaves chunk by chunk, one per turn.

Direct routes: an ASGI request costs a task, a scope, an event, a receive and two sends, which is more
than the tower and the index cost a request. An app may offer routes (method and path to a `DirectRoute`)
that are called from the parser's own callbacks with the whole body, and answer with one write when their
result is ready, with no task. Everything else stays uvicorn's: the parsing, keep-alive and its timeout,
graceful shutdown. A request takes the ASGI path instead whenever the direct one would have to reimplement
more of HTTP: `Expect: 100-continue`, an upgrade, a path with a query string or escapes, or a request
pipelined behind one not yet answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState


class CoalescingTransport:
    """The socket's transport, with writes held until the end of the loop turn that made them."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(bytes(data))

    def write_now(self, data: bytes) -> None:
        """Send at once, after whatever is pending: for a response written whole."""
        if self.pending:
            data = b"".join([*self.pending, data])
            self.pending.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        if not self.pending:
            return
        data = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(len(p) for p in self.pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class DirectRoute(Protocol):
    """Called once per request, with the whole body or, past `max_body_bytes`, with `body` None at once."""

    max_body_bytes: int

    def __call__(self, request: DirectRequest) -> None: ...


Headers = list[tuple[bytes, bytes]]


def header_value(headers: Headers, name: bytes) -> str | None:
    """The first value of a header, by its lower-case name, as uvicorn lists them for both paths."""
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _NoEvent:
    """uvicorn sets its cycle's message event when the connection drops; a direct request has no waiter."""

    def set(self) -> None:
        pass


class DirectRequest:
    """One request on a direct route, standing in as the connection's uvicorn cycle until it is answered.

    uvicorn reads `response_complete` (is a pipelined request free to start?), sets `disconnected` when the
    connection drops and clears `keep_alive` on graceful shutdown; those are the only parts it touches.
    """

    message_event = _NoEvent()

    def __init__(self, protocol: DirectHttpProtocol, headers: Headers, keep_alive: bool) -> None:
        self.protocol = protocol
        self.headers = headers
        self.keep_alive = keep_alive
        self.body: bytes | None = b""
        self.response_complete = False
        self.disconnected = False

    def header(self, name: bytes) -> str | None:
        return header_value(self.headers, name)

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """Send the whole response in one write; nothing happens if the client has gone or it was answered."""
        if self.response_complete or self.disconnected:
            return
        self.response_complete = True
        head = [STATUS_LINE[status]]
        for name, value in (*self.protocol.server_state.default_headers, *headers):  # uvicorn's: date, server
            head += (name, b": ", value, b"\r\n")
        head += (b"content-length: ", b"%d" % len(body), b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        self.protocol.respond_directly(self, b"".join(head))


class DirectHttpProtocol(HttpToolsProtocol):
    """The coalescing protocol, with the app's `direct_routes` answered from the parser's callbacks."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.direct_routes = direct_routes_of(self.app)
        self.direct: DirectRequest | None = None
        self.direct_route: DirectRoute | None = None
        self.body_parts: list[bytes] = []
        self.body_size = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        route = self.direct_routes.get((self.parser.get_method(), self.url)) if self.direct_routes else None
        busy = self.cycle is not None and not self.cycle.response_complete
        if route is None or busy or self.expect_100_continue or self.parser.should_upgrade():
            super().on_headers_complete()
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        request = DirectRequest(self, self.headers, keep_alive)
        self.cycle = request  # type: ignore[assignment]
        self.direct, self.direct_route = request, route
        self.body_parts, self.body_size = [], 0
        declared = request.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > route.max_body_bytes:
            self._refuse_oversized()

    def on_body(self, body: bytes) -> None:
        if self.direct is None:
            super().on_body(body)
            return
        if self.direct.response_complete:
            return
        self.body_size += len(body)
        self.body_parts.append(body)
        if self.body_size > self.direct_route.max_body_bytes:  # type: ignore[union-attr]
            self._refuse_oversized()

    def on_message_complete(self) -> None:
        request, route = self.direct, self.direct_route
        if request is None or route is None:
            super().on_message_complete()
            return
        self.direct = self.direct_route = None
        if request.response_complete:
            return
        request.body = self.body_parts[0] if len(self.body_parts) == 1 else b"".join(self.body_parts)
        self.body_parts = []
        self._call(route, request)

    def _refuse_oversized(self) -> None:
        """The route answers (413) before the body is read; the rest of the body is parsed and dropped."""
        assert self.direct is not None and self.direct_route is not None
        self.direct.body = None
        self.body_parts = []
        self._call(self.direct_route, self.direct)

    def _call(self, route: DirectRoute, request: DirectRequest) -> None:
        # An exception must not reach httptools, which would report it as a malformed request (400).
        try:
            route(request)
        except Exception:
            self.logger.exception("Exception in direct route")
            request.respond(500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")

    def respond_directly(self, request: DirectRequest, data: bytes) -> None:
        self.transport.write_now(data)  # type: ignore[attr-defined]
        if not request.keep_alive:
            self.transport.close()
        self.on_response_complete()


def direct_routes_of(app: Any) -> Mapping[tuple[bytes, bytes], DirectRoute]:
    """The app's direct routes, also under uvicorn's proxy-headers middleware (on by default): it only rewrites
    the client address in the scope, which a direct route never reads. Any other wrapper hides them, since a
    direct request would skip what it does."""
    if isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    return getattr(app, "direct_routes", {})


HTTP_PROTOCOL = f"{__name__}:{DirectHttpProtocol.__name__}"
