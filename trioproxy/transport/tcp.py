"""TCP and TLS: listeners, one receive task per connection, and a table of live connections for reuse.

Theory of operation. Every connection, accepted or opened, gets a ``TCPConnection`` registered in the table
under its remote address and a receive task in the serve nursery. The task frames the byte stream with the
message layer's ``StreamFramer`` (partial reads, several messages per read, RFC 5626 keepalives), parses each
message and hands it to ``incoming`` with ``await send`` (so a slow consumer pushes back on the peer through
TCP flow control, where UDP drops). It ends on EOF, a reset, a framing error, the idle timeout or
``close()``; its ``finally`` closes the socket and removes the table entry.

RFC 3261 18.2.2 / RFC 5923: requests and responses reuse any live connection whose remote address is the
destination, including connections the peer opened. Sends are serialised per connection by a lock and bounded
by ``send_timeout``; a failed or timed-out write closes the connection.

TLS is this same code over a ``trio.SSLStream`` (see ``tls.py``): a listener of transport ``"tls"`` wraps each
accepted socket and the connection's task runs the server handshake first (bounded by ``handshake_timeout``:
a client that never finishes it is closed); an outgoing ``"tls"`` connection finishes its handshake, server
certificate checked, before it enters the table. The table is keyed by transport too, so a TCP and a TLS
connection to the same address never stand in for each other. Limits (connections in total and per source,
idle and message timeouts) count both alike. WebSocket listeners (``ws``, ``wss``) accept here too; their
connections are ``ws.WSConnection`` and their receive task is ``ws.serve_ws`` (never opened by the proxy).
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from trioproxy.faults import contain
from trioproxy.flood import FloodGate, Verdict
from trioproxy.sip import Address, Keepalive, SIPError, StreamFramer, parse_message_untrusted

from .inbound import answerable_request, flood_reply
from .tls import TLSContexts
from .types import (
    WS_TRANSPORTS,
    Flow,
    Listen,
    Malformed,
    TransportConfig,
    TransportError,
    TransportStatistics,
    family_of,
)

__all__ = ["TCPConnection", "TCPListener", "TCPManager"]

log = logging.getLogger("trioproxy.transport")

_READ_SIZE = 65536
_PONG = b"\r\n"
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_WILDCARDS = frozenset({"0.0.0.0", "::"})


class TCPConnection:
    """One TCP or TLS connection; ``flow.connection`` is this object. ``closed`` turns True when it ends.

    ``local.transport`` and ``remote.transport`` are ``"tcp"`` or ``"tls"``; ``stream`` the socket stream, or
    the ``trio.SSLStream`` over it (``handshake_pending``: an accepted TLS connection not yet handshaken)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        local: Address,
        remote: Address,
        *,
        outbound: bool,
        send_timeout: float,
        handshake_pending: bool = False,
    ) -> None:
        self.stream = stream
        self.handshake_pending = handshake_pending
        self.send_timeout = send_timeout
        self.local = local
        self.remote = remote
        self.outbound = outbound
        self.flow = Flow(remote.transport, local, remote, True, self)
        self.last_activity = trio.current_time()
        self.closed = False
        self._send_lock = trio.Lock()
        self._scope = trio.CancelScope()

    def __repr__(self) -> str:
        direction = "to" if self.outbound else "from"
        return f"<{self.remote.transport.upper()}Connection {self.local} {direction} {self.remote}{' closed' if self.closed else ''}>"

    def close(self) -> None:
        """Ask the receive task to end and close the socket (non-blocking, idempotent)."""
        self.closed = True
        self._scope.cancel()

    async def send(self, data: bytes) -> None:
        """Write ``data`` whole; on failure or after ``send_timeout`` seconds close and raise TransportError."""
        if self.closed:
            raise TransportError(f"connection to {self.remote} is closed")
        async with self._send_lock:
            with trio.move_on_after(self.send_timeout) as scope:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close()
                    raise TransportError(f"{self.remote.transport} send to {self.remote}: {exc}") from exc
            if scope.cancelled_caught:
                # A partial write leaves the stream unusable for framing.
                self.close()
                raise TransportError(f"{self.remote.transport} send to {self.remote} timed out")
        self.last_activity = trio.current_time()


class TCPListener:
    """A bound, listening TCP socket (``transport`` ``"tcp"``, or ``"tls"``: accepted sockets are wrapped)."""

    def __init__(self, listen: Listen, *, reuse_port: bool = False) -> None:
        family = listen.family
        raw = socket.socket(family, socket.SOCK_STREAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            raw.bind((listen.host, listen.port))
            raw.listen(socket.SOMAXCONN)
        except BaseException:
            raw.close()
            raise
        self.socket = trio.socket.from_stdlib_socket(raw)
        self.family = family
        self.transport = listen.transport
        port = raw.getsockname()[1]
        self.local = Address(listen.transport, listen.host, port)
        self.advertised = Address(listen.transport, listen.advertise or listen.host, port)

    def close(self) -> None:
        """Close the listening socket."""
        self.socket.close()


class _Pending:
    # An outgoing connect in progress: later senders to the same address wait for it.
    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: TransportError | None = None


class TCPManager:
    """The connection table, the accept loops and the per-connection receive tasks."""

    def __init__(
        self,
        config: TransportConfig,
        stats: TransportStatistics,
        send_channel: trio.MemorySendChannel[object],
    ) -> None:
        self.config = config
        self.connections: dict[Address, TCPConnection] = {}
        self.nursery: trio.Nursery | None = None
        self._stats = stats
        self._send_channel = send_channel
        self._pending: dict[Address, _Pending] = {}
        self.gate: FloodGate | None = None  # the ingress gate (pike), set by Transports
        self.accepted_by_source: dict[str, int] = {}  # open accepted connections per remote IP
        self.tls: TLSContexts | None = None  # SSL contexts of TLS listeners and outgoing TLS (set by Transports)

    async def accept_loop(self, listener: TCPListener) -> None:
        """Accept connections forever on ``listener``; each gets a receive task."""
        stats = self._stats
        while True:
            try:
                sock, _ = await listener.socket.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("tcp accept on %s: %s; retrying", listener.local, exc)
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            if len(self.connections) >= self.config.max_connections:
                stats.tcp_connections_refused += 1
                sock.close()
                continue
            try:
                local_name = sock.getsockname()
                peer = sock.getpeername()
            except OSError:
                sock.close()
                continue
            if not self._admit_connection(peer[0]):
                sock.close()
                continue
            transport = listener.transport
            secure = transport in ("tls", "wss")
            stream: trio.abc.Stream = trio.SocketStream(sock)
            if secure:
                try:
                    stream = self._tls().server_stream(trio.SocketStream(sock))
                except (TransportError, ValueError) as exc:
                    log.error("tls accept on %s: %s", listener.local, exc)
                    sock.close()
                    continue
            local = Address(transport, local_name[0], local_name[1])
            remote = Address(transport, peer[0], peer[1])
            conn: TCPConnection
            if transport in WS_TRANSPORTS:
                from .ws import WSConnection  # here: ws.py imports this module

                conn = WSConnection(
                    stream, local, remote, send_timeout=self.config.send_timeout, handshake_pending=secure
                )
            else:
                conn = TCPConnection(
                    stream, local, remote, outbound=False, send_timeout=self.config.send_timeout,
                    handshake_pending=secure,
                )  # fmt: skip
            stats.tcp_connections_accepted += 1
            self.accepted_by_source[peer[0]] = self.accepted_by_source.get(peer[0], 0) + 1
            self._start(conn)

    def _admit_connection(self, ip: str) -> bool:
        # Per connection, before any byte is read: the source's pike block and its share of connections.
        gate = self.gate
        if gate is not None and not gate.admit_connection(ip, trio.current_time()):
            self._stats.tcp_connections_blocked += 1
            return False
        limit = self.config.max_connections_per_source
        if limit and self.accepted_by_source.get(ip, 0) >= limit:
            self._stats.tcp_connections_refused += 1
            return False
        return True

    def _start(self, conn: TCPConnection) -> None:
        assert self.nursery is not None
        old = self.connections.get(conn.remote)
        if old is not None:
            old.close()
        self.connections[conn.remote] = conn
        self._stats.tcp_connections_open += 1
        self.nursery.start_soon(self._serve_connection, conn)

    def _tls(self) -> TLSContexts:
        if self.tls is None:
            raise TransportError("TLS is not configured (no certificate)")
        return self.tls

    async def _handshake(self, conn: TCPConnection) -> bool:
        # The server side of an accepted TLS connection: True when done within handshake_timeout.
        stream = conn.stream
        assert isinstance(stream, trio.SSLStream)
        with trio.move_on_after(self.config.handshake_timeout) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._stats.tls_handshake_failures += 1
                log.info("tls handshake with %s failed: %s", conn.remote, exc.__cause__ or exc)
                return False
        if scope.cancelled_caught:
            self._stats.tls_handshake_timeouts += 1
            log.info("closing %r: tls handshake unfinished after %.1f s", conn, self.config.handshake_timeout)
            return False
        conn.handshake_pending = False
        conn.last_activity = trio.current_time()
        return True

    async def _serve_connection(self, conn: TCPConnection) -> None:
        try:
            with conn._scope:
                if conn.handshake_pending and not await self._handshake(conn):
                    return
                if conn.remote.transport in WS_TRANSPORTS:
                    from .ws import WSConnection, serve_ws  # here: ws.py imports this module

                    assert isinstance(conn, WSConnection)
                    await serve_ws(self, conn)
                else:
                    await self._read_loop(conn)
        except Exception as exc:  # boundary of a connection task: the connection closes, the server goes on
            contain("tcp_connection", exc, detail=f"connection from {conn.remote}")
        finally:
            conn.closed = True
            if self.connections.get(conn.remote) is conn:
                del self.connections[conn.remote]
            if not conn.outbound:
                host = conn.remote.host
                left = self.accepted_by_source.get(host, 1) - 1
                if left > 0:
                    self.accepted_by_source[host] = left
                else:
                    self.accepted_by_source.pop(host, None)
            self._stats.tcp_connections_open -= 1
            self._stats.tcp_connections_closed += 1
            with trio.CancelScope(shield=True):
                await _close_stream(conn.stream)

    async def _read_loop(self, conn: TCPConnection) -> None:
        config = self.config
        stats = self._stats
        framer = StreamFramer(max_message_size=config.max_message_size)
        stream = conn.stream
        gate = self.gate
        host = conn.remote.host
        partial_since: float | None = None  # when the unfinished message in the framer began
        while True:
            deadline = conn.last_activity + config.idle_timeout
            if partial_since is not None and config.message_timeout > 0:
                deadline = min(deadline, partial_since + config.message_timeout)
            with trio.move_on_at(deadline) as idle:
                try:
                    data = bytes(await stream.receive_some(_READ_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
            if idle.cancelled_caught:
                if partial_since is not None and config.message_timeout > 0:
                    if trio.current_time() >= partial_since + config.message_timeout:
                        # Slowloris: part of a message, then a trickle (or nothing) for too long.
                        stats.tcp_message_timeouts += 1
                        log.info("closing %r: message unfinished after %.1f s", conn, config.message_timeout)
                        return
                # A send may have refreshed last_activity meanwhile: only close when truly idle.
                if trio.current_time() >= conn.last_activity + config.idle_timeout:
                    stats.tcp_idle_closed += 1
                    return
                continue
            if not data:
                return  # EOF
            conn.last_activity = now = trio.current_time()
            if gate is not None and gate.tracker.blocked and gate.tracker.is_blocked(host, now) and gate.action != "503":
                stats.flood_dropped += 1
                return  # a blocked source's connection: closed before its bytes are framed
            try:
                items = framer.feed(data)
            except SIPError as exc:
                # The stream cannot be resynchronised: close it (the framer's contract).
                stats.framing_errors += 1
                log.debug("closing %r: framing error %s", conn, exc)
                return
            if not framer.buffered:
                partial_since = None
            elif partial_since is None or any(isinstance(item, bytes) for item in items):
                partial_since = now
            for item in items:
                if item is Keepalive.PING:
                    # RFC 5626 4.4.1: answer a double CRLF with a single CRLF.
                    stats.keepalives += 1
                    try:
                        await conn.send(_PONG)
                    except TransportError:
                        return
                elif item is Keepalive.PONG:
                    stats.keepalives += 1
                elif isinstance(item, bytes):
                    if gate is not None and (gate.enabled or gate.tracker.blocked):
                        verdict = gate.admit(host, item, trio.current_time())
                        if verdict is Verdict.DROP:
                            stats.flood_dropped += 1
                            return  # closes the connection: nothing more is read from a blocked source
                        if verdict is Verdict.REJECT:
                            reply = flood_reply(item, gate.retry_after)
                            if reply is not None:
                                stats.flood_rejected += 1
                                try:
                                    await conn.send(reply)
                                except TransportError:
                                    return
                            continue
                    try:
                        delivered = await self._deliver(item, conn)
                    except Exception as exc:  # boundary of one message: the connection goes on
                        stats.parse_errors += 1
                        contain("tcp_message", exc, detail=f"message from {conn.remote}")
                        continue
                    if not delivered:
                        return

    async def _deliver(self, data: bytes, conn: TCPConnection) -> bool:
        # False when nobody reads ``incoming`` any more.
        stats = self._stats
        item: object
        try:
            msg = parse_message_untrusted(data)
        except SIPError as exc:
            stats.parse_errors += 1
            if not answerable_request(data):
                return True
            item = Malformed(data, conn.remote, conn.flow, exc)
            stats.malformed_delivered += 1
        except Exception as exc:  # the parser promises SIPError only; a bug there must not end the server
            stats.parse_errors += 1
            contain("tcp_message", exc, detail=f"parsing a message from {conn.remote}")
            return True
        else:
            msg.source = conn.remote
            msg.flow = conn.flow
            stats.tcp_messages_in += 1
            item = msg
        try:
            await self._send_channel.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def connection_to(
        self, dest: Address, local_host: str | None, server_name: str | None = None
    ) -> TCPConnection:
        """A live connection to ``dest``: reused from the table or opened (waiting for a connect to the same
        address already under way). ``TransportError`` when refused or after ``connect_timeout`` (for TLS:
        also when the handshake fails, the server's certificate does not match ``server_name`` or
        ``dest.host``, or after ``handshake_timeout``)."""
        while True:
            conn = self.connections.get(dest)
            if conn is not None and not conn.closed:
                return conn
            pending = self._pending.get(dest)
            if pending is None:
                break
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
        pending = _Pending()
        self._pending[dest] = pending
        try:
            return await self._open(dest, local_host, server_name)
        except TransportError as exc:
            pending.error = exc
            raise
        finally:
            del self._pending[dest]
            pending.done.set()

    async def _open(self, dest: Address, local_host: str | None, server_name: str | None = None) -> TCPConnection:
        if self.nursery is None:
            raise TransportError("transports are not serving")
        if len(self.connections) >= self.config.max_connections:
            raise TransportError("too many tcp connections")
        sock = trio.socket.socket(family_of(dest.host), socket.SOCK_STREAM)
        try:
            if local_host is not None and local_host not in _WILDCARDS:
                # Leave from the listener's address so that the peer sees the host we put in Via.
                await sock.bind((local_host, 0))
            with trio.move_on_after(self.config.connect_timeout) as scope:
                await sock.connect((dest.host, dest.port))
            if scope.cancelled_caught:
                raise TransportError(f"tcp connect to {dest.host_port} timed out")
            local_name = sock.getsockname()
        except OSError as exc:
            sock.close()
            raise TransportError(f"tcp connect to {dest.host_port} failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        if self.nursery is None:  # serve ended while we were connecting
            sock.close()
            raise TransportError("transports are not serving")
        stream: trio.abc.Stream = trio.SocketStream(sock)
        if dest.transport == "tls":
            stream = await self._client_handshake(trio.SocketStream(sock), dest, server_name or dest.host)
        if self.nursery is None:
            await _close_stream(stream)
            raise TransportError("transports are not serving")
        local = Address(dest.transport, local_name[0], local_name[1])
        conn = TCPConnection(stream, local, dest, outbound=True, send_timeout=self.config.send_timeout)
        self._stats.tcp_connections_opened += 1
        self._start(conn)
        return conn

    async def _client_handshake(
        self, stream: trio.SocketStream, dest: Address, server_name: str
    ) -> trio.SSLStream[trio.SocketStream]:
        try:
            tls = self._tls().client_stream(stream, server_name)
        except (TransportError, ValueError) as exc:
            await stream.aclose()
            raise TransportError(f"tls to {dest.host_port}: {exc}") from exc
        failure: str | None = None
        with trio.move_on_after(self.config.handshake_timeout) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failure = str(exc.__cause__ or exc)
        if scope.cancelled_caught:
            self._stats.tls_handshake_timeouts += 1
            failure = f"handshake unfinished after {self.config.handshake_timeout:.1f} s"
        elif failure is not None:
            self._stats.tls_handshake_failures += 1
        if failure is not None:
            await _close_stream(tls)
            raise TransportError(f"tls to {dest.host_port} ({server_name}) failed: {failure}")
        return tls

    def close_all(self) -> None:
        """Close every connection (their tasks end at their next checkpoint)."""
        for conn in list(self.connections.values()):
            conn.close()


async def _close_stream(stream: trio.abc.Stream) -> None:
    # A TLS stream says goodbye (close_notify) when it can, but never waits long on a peer for it.
    if isinstance(stream, trio.SSLStream):
        with trio.move_on_after(1.0):
            try:
                await stream.aclose()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(stream.transport_stream)
        return
    await stream.aclose()
