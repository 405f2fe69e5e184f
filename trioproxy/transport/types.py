"""Plain data of the transport layer: listener specs, configuration, flows, errors, counters."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trioproxy.sip import Address, SIPError
from trioproxy.sip.limits import MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from .tcp import TCPConnection
    from .udp import UDPEndpoint

__all__ = [
    "STREAM_TRANSPORTS",
    "TRANSPORTS",
    "WS_TRANSPORTS",
    "Flow",
    "Listen",
    "Malformed",
    "TransportConfig",
    "TransportError",
    "TransportStatistics",
    "family_of",
]

# Transports this package serves; TLS is the TCP stream code over trio.SSLStream, WS/WSS (RFC 7118) the same
# connections carrying one SIP message per WebSocket message (``ws.py``).
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")

# Transports carried over a byte stream (framed by ``StreamFramer``, connections kept for reuse).
STREAM_TRANSPORTS = frozenset({"tcp", "tls"})

# WebSocket transports: connections are only accepted, never opened by the proxy.
WS_TRANSPORTS = frozenset({"ws", "wss"})


class TransportError(Exception):
    """A message could not be sent (connect refused or timed out, ICMP unreachable, broken connection)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """One listening socket: ``transport`` ``"udp"``/``"tcp"``/``"tls"``/``"ws"``/``"wss"``, ``host`` an IPv4 or IPv6 literal, ``port``
    (0 picks a free port). ``advertise`` replaces the host in :meth:`Transports.local_address` (for Via and
    Record-Route) when the socket is bound to a wildcard or a private address."""

    transport: str
    host: str
    port: int
    advertise: str | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unsupported transport {self.transport!r} (expected one of {TRANSPORTS})")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_INET6`` for an IPv6 literal, else ``AF_INET``."""
        return family_of(self.host)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Tunables of :class:`Transports`; times in seconds."""

    # Messages waiting in ``Transports.incoming``; past it UDP datagrams are dropped (and counted) and TCP
    # readers wait (TCP flow control pushes back on the peer).
    incoming_capacity: int = 1024
    # Seconds a TCP connection may stay without traffic either way before it is closed.
    idle_timeout: float = 300.0
    # Seconds to establish an outgoing TCP connection.
    connect_timeout: float = 10.0
    # Seconds one write on a TCP connection may take before the connection is given up.
    send_timeout: float = 10.0
    # Seconds a TLS handshake may take (accepted or opened) before the connection is closed.
    handshake_timeout: float = 10.0
    # Largest message a TCP peer may send; also bounds the per-connection buffer.
    max_message_size: int = MAX_MESSAGE_SIZE
    # Largest UDP datagram taken (larger ones are dropped before parsing, counted as ``oversize``).
    udp_max_message_size: int = MAX_MESSAGE_SIZE
    # Connections open at once (accepted and opened); past it new accepts are closed at once.
    max_connections: int = 10000
    # Connections accepted from one IP address at once (0: no limit); past it new accepts are closed at once.
    max_connections_per_source: int = 0
    # Seconds a stream may hold part of a message (a head without its blank line, a body still short)
    # before the connection is closed (slowloris); 0: only the idle timeout applies.
    message_timeout: float = 0.0
    # Seconds a WebSocket connection may stay silent before the proxy sends a ping (RFC 6455 5.5.2); the
    # idle timeout still closes a connection that answers nothing. 0: no pings.
    ws_ping_interval: float = 30.0
    # SO_REUSEPORT on every listener, so that several worker processes can share the SIP port.
    reuse_port: bool = False
    # Kernel buffer sizes for UDP sockets (None keeps the system default).
    udp_rcvbuf: int | None = 4 * 1024 * 1024
    udp_sndbuf: int | None = None


@dataclass(frozen=True, slots=True)
class Flow:
    """The path a message came on: what a response or a request in the other direction reuses.

    ``connection`` is the TCP or TLS connection (None for UDP); ``endpoint`` the UDP socket it arrived on.
    """

    transport: str
    local: Address
    remote: Address
    reliable: bool
    connection: TCPConnection | None = None
    endpoint: UDPEndpoint | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that did not parse but whose start line and top Via did: the proxy may answer it (400...).

    Delivered on ``Transports.incoming`` next to parsed messages; ``error.status`` is the answer to give.
    """

    data: bytes
    source: Address
    flow: Flow
    error: SIPError


@dataclass(slots=True)
class TransportStatistics:
    """Counters of :class:`Transports` (a snapshot is returned by ``statistics()``)."""

    udp_datagrams_in: int = 0
    udp_datagrams_out: int = 0
    udp_drops: int = 0  # ingress channel full
    flood_dropped: int = 0  # messages of blocked sources dropped at the ingress gate (pike)
    flood_rejected: int = 0  # requests of blocked sources answered 503 at the ingress gate
    udp_icmp_errors: int = 0  # ICMP unreachable reports read from the socket error queue
    tcp_messages_in: int = 0
    tcp_messages_out: int = 0
    tcp_connections_open: int = 0
    tcp_connections_opened: int = 0  # outgoing
    tcp_connections_accepted: int = 0  # incoming
    tcp_connections_closed: int = 0
    tcp_connections_refused: int = 0  # over max_connections or max_connections_per_source
    tcp_connections_blocked: int = 0  # accepts closed at once: the source is blocked (pike)
    tcp_message_timeouts: int = 0  # closed: a message stayed unfinished past message_timeout
    tcp_idle_closed: int = 0
    # TLS connections are counted in the tcp_* counters above too (they are TCP connections); these are TLS only.
    tls_handshake_failures: int = 0  # handshakes that failed (bad or missing certificate, not TLS at all)
    tls_handshake_timeouts: int = 0  # handshakes not finished within handshake_timeout: closed
    framing_errors: int = 0  # stream could not be framed: connection closed
    oversize: int = 0  # UDP datagrams over udp_max_message_size, dropped unparsed
    parse_errors: int = 0  # messages that did not parse (dropped or delivered as Malformed)
    malformed_delivered: int = 0
    keepalives: int = 0  # RFC 5626 pings answered and pongs/blank datagrams ignored
    send_errors: int = 0


def family_of(host: str) -> socket.AddressFamily:
    """Address family of an IP literal (``:`` means IPv6)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
