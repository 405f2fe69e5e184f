"""``MgmtServer``: the management API over HTTP/1.1 (h11 on trio).

Theory of operation
-------------------
One task per connection drives an ``h11.Connection`` (the sans-IO HTTP/1.1 state machine): bytes from the
socket go in with ``receive_data``, events come out of ``next_event``, and the answer goes back through
``send``. Each request must arrive whole (head and body) within ``timeout`` seconds of the connection
becoming ready for it, which also bounds an idle keep-alive connection; a slow or silent client gets a 408
(or, between requests, a plain close) and never holds up the others, since each connection is its own task.
The head is bounded by ``max_head`` bytes (431), the body by ``max_body`` (413), the number of simultaneous
connections by ``max_connections`` (beyond it a new connection is closed at once) and the number of requests
of one connection by ``max_requests``.

Each connection task and each request's handling is an exception boundary (``trioproxy.faults``): a fault is
logged and counted, the request is answered 500 and the connection closed; the server goes on.

With a ``token``, every request needs ``Authorization: Bearer <token>`` (compared in constant time) or is
answered 401. The server listens on loopback by default; exposing it elsewhere without a token is unwise.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Protocol

import h11
import trio

from trioproxy.faults import contain
from trioproxy.mgmt.app import MgmtApp
from trioproxy.mgmt.routes import Endpoints, Reply

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MgmtServer"]

log = logging.getLogger("trioproxy.mgmt")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9060
_RECEIVE_SIZE = 16384
_SERVER_HEADER = b"trioproxy-mgmt"


class Dispatcher(Protocol):
    """What answers the requests: ``Endpoints`` over a ``MgmtApp``, or a supervisor's ``Aggregator``."""

    async def dispatch(self, method: str, target: str) -> Reply: ...


class _Abort(Exception):
    """The connection is over (closed, broken or unusable)."""


class MgmtServer:
    """The management HTTP server; start it with ``port = await nursery.start(server.serve)``."""

    def __init__(
        self,
        app: MgmtApp | None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        *,
        endpoints: Dispatcher | None = None,
        timeout: float = 10.0,
        max_head: int = 16384,
        max_body: int = 65536,
        max_connections: int = 64,
        max_requests: int = 1000,
    ) -> None:
        self.host, self.port = host, port
        # ``endpoints`` replaces the app's routes (a supervisor's aggregator, trioproxy.mgmt.aggregate).
        if endpoints is None:
            if app is None:
                raise ValueError("MgmtServer needs an app or endpoints")
            endpoints = Endpoints(app)
        self.endpoints: Dispatcher = endpoints
        self._token = f"Bearer {token}".encode() if token else None
        self.timeout = timeout
        self.max_head, self.max_body = max_head, max_body
        self.max_connections, self.max_requests = max_connections, max_requests
        self.connections = 0
        self.requests = 0
        self.refused = 0

    def statistics(self) -> dict[str, int]:
        """Open connections, requests received, connections refused beyond ``max_connections``."""
        return {"connections": self.connections, "requests": self.requests, "refused": self.refused}

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port through ``task_status.started``."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0 and len(listeners) > 1:
            # Port 0 on a name with several addresses would give each its own port: keep the first.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound = int(listeners[0].socket.getsockname()[1])
        log.info("management API listening on http://%s:%d", _bracket(self.host), bound)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(bound)

    # -- one connection --------------------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self.connections >= self.max_connections:
            self.refused += 1
            await stream.aclose()
            return
        self.connections += 1
        try:
            await self._requests(stream, h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head))
        except _Abort:
            pass
        except Exception as exc:  # boundary of a connection task: it closes, the server goes on
            contain("mgmt_connection", exc)
        finally:
            self.connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _requests(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        for _ in range(self.max_requests):
            # Receiving is bounded by the timeout; the app's work (a reload) is not cut short by it.
            with trio.move_on_after(self.timeout) as scope:
                received = await self._receive_request(stream, conn)
            if scope.cancelled_caught:
                # RFC 9110 15.5.9: 408 when the request did not arrive in time; between requests just close.
                partial = conn.their_state is h11.SEND_BODY or (conn.their_state is h11.IDLE and conn.trailing_data[0])
                if partial and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    with trio.move_on_after(1):
                        await self._send(stream, conn, Reply.error(408, "request timeout"), close=True)
                return
            if received is None:
                return
            if isinstance(received, Reply):
                reply, keep = received, received.status == 401
            else:
                method, target = received
                log.debug("management request %s %s", method, target)
                try:
                    reply, keep = await self.endpoints.dispatch(method, target), True
                except Exception as exc:  # boundary of one management request: answered 500
                    contain("mgmt", exc, detail=f"{method} {target}")
                    reply, keep = Reply.error(500, "internal error (see the proxy's log)"), False
            with trio.move_on_after(self.timeout) as scope:
                await self._send(stream, conn, reply, close=not keep)
            if scope.cancelled_caught or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _receive_request(self, stream: trio.SocketStream, conn: h11.Connection) -> tuple[str, str] | Reply | None:
        """Read one whole request: its method and target, or the Reply that refuses it; None: closed."""
        try:
            event = await self._next_event(stream, conn)
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):
                raise _Abort
            self.requests += 1
            # A request line's method and target are visible ASCII (h11 has checked their characters).
            method, target = event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace")
            headers = dict(event.headers)
            # h11 bounds a head still arriving (max_incomplete_event_size); one that came whole in a single
            # read is measured here.
            head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
            if head_size > self.max_head:
                return Reply.error(431, f"request head larger than {self.max_head} bytes")
            length = headers.get(b"content-length")
            if length is not None and int(length) > self.max_body:
                return Reply.error(413, f"request body larger than {self.max_body} bytes")
            if conn.they_are_waiting_for_100_continue:
                await self._write(stream, conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            size = 0
            while not isinstance(event, h11.EndOfMessage):
                event = await self._next_event(stream, conn)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.max_body:
                        return Reply.error(413, f"request body larger than {self.max_body} bytes")
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Abort  # closed in the middle of a body
        except h11.RemoteProtocolError as exc:
            # h11 lets a server answer an unreadable request (from IDLE) before giving up the connection.
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                raise _Abort from None
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            return Reply.error(status, f"bad request: {exc}")
        if not self._authorized(headers.get(b"authorization")):
            return Reply.error(401, "a bearer token is required", (("WWW-Authenticate", 'Bearer realm="trioproxy"'),))
        return method, target

    def _authorized(self, header: bytes | None) -> bool:
        if self._token is None:
            return True
        # Constant-time comparison: the time taken says nothing about how much of the token was right.
        return header is not None and hmac.compare_digest(header, self._token)

    async def _next_event(self, stream: trio.SocketStream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise _Abort from None
            conn.receive_data(data)

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, reply: Reply, *, close: bool) -> None:
        headers = [
            (b"Content-Type", reply.content_type.encode()),
            (b"Content-Length", str(len(reply.body)).encode()),
            (b"Server", _SERVER_HEADER),
            (b"Cache-Control", b"no-store"),
        ]
        headers += [(name.encode(), value.encode()) for name, value in reply.headers]
        if close:
            headers.append((b"Connection", b"close"))
        try:
            data = conn.send(h11.Response(status_code=reply.status, headers=headers)) or b""
            data += conn.send(h11.Data(data=reply.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            raise _Abort from None
        await self._write(stream, data)

    async def _write(self, stream: trio.SocketStream, data: bytes | None) -> None:
        try:
            await stream.send_all(data or b"")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Abort from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
