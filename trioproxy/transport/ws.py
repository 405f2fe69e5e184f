"""WebSocket transports (RFC 7118 over RFC 6455): ``ws`` and ``wss`` connections carrying one SIP message per frame.

Theory of operation. A ``ws`` or ``wss`` listener is a TCP listener (``tcp.py``; ``wss`` wraps accepted sockets
in TLS with the settings of the TLS transport). Each accepted connection is a ``WSConnection`` — a
``TCPConnection`` whose ``send`` puts one SIP message into one WebSocket message — and its receive task runs
``serve_ws``: the HTTP upgrade first (bounded by ``handshake_timeout``; any path; the client must offer the
``sip`` subprotocol and the 101 answer carries ``Sec-WebSocket-Protocol: sip``, which browsers require), then
WebSocket messages, text or binary, each parsed as one SIP message and handed to ``incoming`` like a TCP one.
The framing is wsproto's (RFC 6455: masking, fragmentation, control frames, close handshake).

Keepalive: after ``ws_ping_interval`` seconds without anything received the proxy sends a ping; a peer that
answers nothing for ``idle_timeout`` seconds is closed. Pings from the peer are answered with pongs. Limits
(connections in total and per source, message size, the pike gate) count WebSocket connections like TCP ones.

The proxy never opens a WebSocket connection (browsers cannot accept one and put an unresolvable ``.invalid``
host in Via and Contact): requests and responses to a WebSocket peer go over the connection it opened, and
``Transports`` fails at once with ``TransportError`` when that connection is gone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
from wsproto import ConnectionType
from wsproto import WSConnection as _Protocol
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from trioproxy.faults import contain
from trioproxy.flood import Verdict
from trioproxy.sip import Address

from .inbound import flood_reply
from .tcp import TCPConnection
from .types import TransportError

if TYPE_CHECKING:
    from .tcp import TCPManager

__all__ = ["SUBPROTOCOL", "WSConnection", "serve_ws"]

log = logging.getLogger("trioproxy.transport")

SUBPROTOCOL = "sip"  # RFC 7118 4: the WebSocket subprotocol of SIP
_READ_SIZE = 65536
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_TOO_BIG = 1009


class WSConnection(TCPConnection):
    """One accepted WebSocket connection (``remote.transport`` ``"ws"`` or ``"wss"``).

    ``send`` takes a whole SIP message and writes it as one WebSocket message (text when it is UTF-8, else
    binary); before the upgrade is done it refuses to send."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        local: Address,
        remote: Address,
        *,
        send_timeout: float,
        handshake_pending: bool = False,
    ) -> None:
        super().__init__(
            stream,
            local,
            remote,
            outbound=False,
            send_timeout=send_timeout,
            handshake_pending=handshake_pending,
        )
        self.protocol = _Protocol(ConnectionType.SERVER)
        self.upgraded = False
        self.last_received = trio.current_time()

    async def send(self, data: bytes) -> None:
        """Send one SIP message as one WebSocket message; TransportError when closed or not upgraded yet."""
        if not self.upgraded:
            raise TransportError(f"websocket connection from {self.remote} is not open")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            event: Event = BytesMessage(data=data)
        else:
            event = TextMessage(data=text)
        await self.send_event(event)

    async def send_event(self, event: Event) -> None:
        """Frame a wsproto event (a message, ping, pong or close) and write it."""
        try:
            frame = self.protocol.send(event)
        except LocalProtocolError as exc:  # the close handshake has begun: nothing more may be sent
            self.close()
            raise TransportError(f"websocket send to {self.remote}: {exc}") from exc
        await super().send(frame)


async def serve_ws(manager: TCPManager, conn: WSConnection) -> None:
    """The receive task of an accepted WebSocket connection (after TLS, for wss): upgrade, then messages."""
    if not await _upgrade(manager, conn):
        return
    await _read_loop(manager, conn)


async def _upgrade(manager: TCPManager, conn: WSConnection) -> bool:
    # The HTTP/1.1 upgrade (RFC 6455 4.2), within handshake_timeout; True when the connection is open.
    stream, protocol = conn.stream, conn.protocol
    with trio.move_on_after(manager.config.handshake_timeout):
        while True:
            try:
                data = bytes(await stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            try:
                protocol.receive_data(data or None)
                events = list(protocol.events())
            except RemoteProtocolError as exc:
                log.info("websocket upgrade from %s refused: %s", conn.remote, exc)
                if exc.event_hint is not None:
                    try:
                        await _write(conn, protocol.send(exc.event_hint))
                    except LocalProtocolError:
                        pass
                return False
            for event in events:
                if not isinstance(event, Request):
                    continue
                if SUBPROTOCOL not in event.subprotocols:
                    # RFC 7118 4: the client must ask for "sip"; browsers would drop a 101 without it anyway.
                    log.info("websocket upgrade from %s refused: no 'sip' subprotocol", conn.remote)
                    await _write(conn, protocol.send(RejectConnection(status_code=400)))
                    return False
                if not await _write(conn, protocol.send(AcceptConnection(subprotocol=SUBPROTOCOL))):
                    return False
                conn.upgraded = True
                conn.last_activity = conn.last_received = trio.current_time()
                return True
            if not data:
                return False
    log.info("closing %r: websocket upgrade unfinished after %.1f s", conn, manager.config.handshake_timeout)
    return False


async def _write(conn: WSConnection, data: bytes) -> bool:
    # Raw bytes on the connection's stream (the upgrade answer), bounded by send_timeout.
    if not data:
        return True
    with trio.move_on_after(conn.send_timeout):
        try:
            await conn.stream.send_all(data)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
    return False


async def _read_loop(manager: TCPManager, conn: WSConnection) -> None:
    config = manager.config
    stream, protocol = conn.stream, conn.protocol
    ping_interval = config.ws_ping_interval
    pinged = False  # a ping is out since the last thing received
    parts: list[bytes] = []
    size = 0
    while True:
        # With pings, only what the peer sends keeps the connection (our own pings must not); without
        # them, traffic either way does, as on TCP.
        idle_from = conn.last_received if ping_interval > 0 else conn.last_activity
        deadline = idle_from + config.idle_timeout
        if ping_interval > 0 and not pinged:
            deadline = min(deadline, conn.last_received + ping_interval)
        with trio.move_on_at(deadline) as timer:
            try:
                data = bytes(await stream.receive_some(_READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
        if timer.cancelled_caught:
            now = trio.current_time()
            idle_from = conn.last_received if ping_interval > 0 else conn.last_activity
            if now >= idle_from + config.idle_timeout:
                manager._stats.tcp_idle_closed += 1
                log.debug("closing %r: idle", conn)
                return
            if ping_interval > 0 and not pinged and now >= conn.last_received + ping_interval:
                pinged = True
                try:
                    await conn.send_event(Ping(payload=b"trioproxy"))
                except TransportError:
                    return
            continue
        now = trio.current_time()
        conn.last_activity = conn.last_received = now
        pinged = False
        try:
            protocol.receive_data(data or None)
            events = list(protocol.events())
        except RemoteProtocolError as exc:
            manager._stats.framing_errors += 1
            log.debug("closing %r: websocket protocol error %s", conn, exc)
            await _close(conn, _CLOSE_PROTOCOL_ERROR)
            return
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                chunk = event.data.encode("utf-8") if isinstance(event, TextMessage) else bytes(event.data)
                size += len(chunk)
                if size > config.max_message_size:
                    manager._stats.framing_errors += 1
                    log.info("closing %r: websocket message over %d bytes", conn, config.max_message_size)
                    await _close(conn, _CLOSE_TOO_BIG)
                    return
                parts.append(chunk)
                if isinstance(event, Message) and event.message_finished:
                    message, parts, size = b"".join(parts), [], 0
                    if not await _message(manager, conn, message):
                        return
            elif isinstance(event, Ping):
                manager._stats.keepalives += 1
                try:
                    await conn.send_event(event.response())
                except TransportError:
                    return
            elif isinstance(event, Pong):
                manager._stats.keepalives += 1
            elif isinstance(event, CloseConnection):
                if protocol.state is ConnectionState.REMOTE_CLOSING:
                    try:
                        await conn.send_event(event.response())
                    except TransportError:
                        pass
                return
        if not data:
            return  # EOF


async def _message(manager: TCPManager, conn: WSConnection, data: bytes) -> bool:
    # One whole SIP message: the ingress gate (pike) as on TCP, then parse and deliver. False: close.
    gate = manager.gate
    host = conn.remote.host
    if not data.strip(b"\r\n"):
        manager._stats.keepalives += 1  # an RFC 5626 CRLF keepalive inside a frame: nothing to deliver
        return True
    if gate is not None and (gate.enabled or gate.tracker.blocked):
        verdict = gate.admit(host, data, trio.current_time())
        if verdict is Verdict.DROP:
            manager._stats.flood_dropped += 1
            return False
        if verdict is Verdict.REJECT:
            reply = flood_reply(data, gate.retry_after)
            if reply is not None:
                manager._stats.flood_rejected += 1
                try:
                    await conn.send(reply)
                except TransportError:
                    return False
            return True
    try:
        return await manager._deliver(data, conn)
    except Exception as exc:  # boundary of one message: the connection goes on
        manager._stats.parse_errors += 1
        contain("ws_message", exc, detail=f"message from {conn.remote}")
        return True


async def _close(conn: WSConnection, code: int) -> None:
    # Start the close handshake (best effort); the caller then ends the connection's task.
    try:
        await conn.send_event(CloseConnection(code=code))
    except TransportError:
        pass
