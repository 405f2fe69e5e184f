"""``Transports``: the listeners, the ``incoming`` channel and the two send operations.

TCP, TLS and WebSocket (``ws``/``wss``, ``ws.py``: sent to only over the peer's own connection) share the
stream code of ``tcp.py``; TLS needs a ``TLSContexts`` (``tls=``) for its listeners and
for the connections it opens. An outgoing TLS connection checks the server certificate against the name the
next hop was located by, when the proxy told it (``note_server_name``), else against the IP address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Union

import trio

from trioproxy.faults import contain
from trioproxy.flood import FloodGate
from trioproxy.sip import Address, Message, Request, Response, SIPError

from .tcp import TCPConnection, TCPListener, TCPManager
from .tls import TLSContexts
from .types import (
    STREAM_TRANSPORTS,
    WS_TRANSPORTS,
    Flow,
    Listen,
    Malformed,
    TransportConfig,
    TransportError,
    TransportStatistics,
    family_of,
)
from .udp import UDPEndpoint
from .via import response_address, response_target

__all__ = ["Incoming", "Transports"]

# What ``Transports.incoming`` carries.
Incoming = Union[Request, Response, Malformed]  # noqa: UP007 - a runtime alias, kept readable for 3.11

_LITERAL_CACHE_MAX = 4096
_SERVER_NAMES_MAX = 4096
_RESTART_PAUSE = 0.1  # seconds before a listener loop that failed starts again


class Transports:
    """UDP, TCP, TLS, WS and WSS listeners on IPv4/IPv6, a bounded ``incoming`` channel, ``send_request``/``send_response``.

    Usage: ``await nursery.start(transports.serve)``; then read ``transports.incoming``. Cancelling the serve
    task closes every socket and connection, and closes ``incoming`` for its readers.

    A consumer on the hot path should drain with ``incoming.receive_nowait()`` and await ``receive()`` only
    on ``trio.WouldBlock``: ``receive()`` yields to the scheduler even when a message is queued, which
    costs several microseconds per message (scripts/bench_udp.py).
    """

    def __init__(
        self,
        listens: Sequence[Listen],
        config: TransportConfig | None = None,
        *,
        gate: FloodGate | None = None,
        tls: TLSContexts | None = None,
        own: Sequence[Listen] = (),
    ) -> None:
        if not listens:
            raise ValueError("at least one Listen is needed")
        if any(listen.transport in ("tls", "wss") for listen in listens) and (tls is None or tls.server is None):
            raise ValueError("a tls or wss listener needs a certificate and key")
        self.config = config or TransportConfig()
        # A worker process (``trioproxy.workers``): ``own`` are its private listeners, bound first (without
        # SO_REUSEPORT) so that requests leave from them and ``local_address`` (Via, Record-Route) names them;
        # ``listens`` are the ports shared by every worker.
        self._own = list(own)
        self._listens = self._own + list(listens)
        self._own_items: list[UDPEndpoint | TCPListener] = []
        self._stats = TransportStatistics()
        send, receive = trio.open_memory_channel[object](self.config.incoming_capacity)
        self._send_channel = send
        self.incoming: trio.MemoryReceiveChannel[Incoming] = receive  # type: ignore[assignment]
        self._udp: list[UDPEndpoint] = []
        self._udp_by_family: dict[socket.AddressFamily, UDPEndpoint] = {}
        self._tcp_listeners: list[TCPListener] = []
        self._tcp_by_family: dict[tuple[str, socket.AddressFamily], TCPListener] = {}
        self._tcp = TCPManager(self.config, self._stats, send)
        self.tls = tls
        self._tcp.tls = tls
        # Next hops located by name (dest -> the name): what an outgoing TLS connection checks the
        # certificate against (RFC 5922); bounded, cleared when full.
        self._server_names: dict[Address, str] = {}
        # The ingress gate (pike, docs/LIMITS.md): consulted on every message before it is parsed.
        self.gate = gate
        self._tcp.gate = gate
        self._literal: dict[str, bool] = {}
        self._served = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every listener, report readiness with ``task_status.started()``, receive until cancelled."""
        if self._served:
            raise RuntimeError("Transports.serve can run once")
        self._served = True
        try:
            private = dataclasses.replace(self.config, reuse_port=False)
            for n, listen in enumerate(self._listens):
                config = private if n < len(self._own) else self.config
                try:
                    if listen.transport == "udp":
                        endpoint = UDPEndpoint(listen, config, self._stats, self.gate)
                        if n < len(self._own):
                            self._own_items.append(endpoint)
                        self._udp.append(endpoint)
                        self._udp_by_family.setdefault(endpoint.family, endpoint)
                    else:
                        listener = TCPListener(listen, reuse_port=config.reuse_port)
                        if n < len(self._own):
                            self._own_items.append(listener)
                        self._tcp_listeners.append(listener)
                        self._tcp_by_family.setdefault((listener.transport, listener.family), listener)
                except OSError as exc:
                    where = Address(listen.transport, listen.host, listen.port)
                    raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from exc
            async with trio.open_nursery() as nursery:
                for endpoint in self._udp:
                    nursery.start_soon(
                        _supervised, "udp_listener", endpoint.sock, endpoint.receive_loop, self._send_channel.send_nowait
                    )
                for listener in self._tcp_listeners:
                    kind = f"{listener.transport}_listener"
                    nursery.start_soon(_supervised, kind, listener.socket, self._tcp.accept_loop, listener)
                self._tcp.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._tcp.nursery = None
            self._tcp.close_all()
            for endpoint in self._udp:
                endpoint.close()
            for listener in self._tcp_listeners:
                listener.close()
            self._send_channel.close()

    def local_address(self, transport: str, family: socket.AddressFamily | None = None) -> Address:
        """The address to put in Via / Record-Route for ``transport`` (the bound port, the ``advertise``
        host if set). ``family`` picks the IPv4 or IPv6 listener; None takes the first one configured."""
        bound: list[UDPEndpoint] | list[TCPListener] = (
            self._udp if transport == "udp" else self._tcp_listeners
        )
        for item in bound:
            if item.advertised.transport == transport and (family is None or item.family == family):
                return item.advertised
        which = "" if family is None else f" for {family.name}"
        raise TransportError(f"no bound {transport} listener{which}")

    def record_address(self, local: Address) -> Address:
        """The address to record (Record-Route) for a request received on the listener bound at ``local``.

        In a worker, a request that came in on a shared port is recorded with the worker's own listener of
        that transport and family, so that the dialog's later requests reach the worker holding its state;
        otherwise ``local`` itself (in a single process every listener is its own)."""
        if not self._own_items or local.transport in WS_TRANSPORTS:
            return local
        key = (local.transport, local.host, local.port)
        if any((item.local.transport, item.local.host, item.local.port) == key for item in self._own_items):
            return local
        family = family_of(local.host)
        for item in self._own_items:
            if item.advertised.transport == local.transport and item.family == family:
                return item.advertised
        return local

    def listen_addresses(self) -> list[Address]:
        """Every bound listener's advertised address, in configuration order per transport."""
        return [e.advertised for e in self._udp] + [t.advertised for t in self._tcp_listeners]

    def connection(self, remote: Address) -> TCPConnection | None:
        """The live TCP or TLS connection to ``remote`` (its transport picks which), if any."""
        conn = self._tcp.connections.get(remote)
        return conn if conn is not None and not conn.closed else None

    def note_server_name(self, dest: Address, name: str) -> None:
        """The next hop ``dest`` (an IP literal) was located from the host name ``name``: a TLS connection
        opened to it verifies the server certificate against ``name`` (and sends it as SNI)."""
        if dest.transport != "tls" or name == dest.host:
            return
        if len(self._server_names) >= _SERVER_NAMES_MAX and dest not in self._server_names:
            self._server_names.clear()
        self._server_names[dest] = name

    def reload_tls(self) -> bool:
        """Read the TLS certificate, key and CA again for new connections (SIGHUP); False on an error (the
        current ones stay) or without TLS."""
        return self.tls.reload() if self.tls is not None else False

    def receive_backlog(self, now: float) -> float:
        """Seconds the oldest recently read datagram waited in a UDP socket's kernel queue (0 once drained)."""
        del now
        return max((e.queue_age for e in self._udp), default=0.0)

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    async def send_request(self, msg: Message, dest: Address) -> None:
        """Send ``msg`` to ``dest`` (an IP literal), from the listener of that transport and family.

        TCP and TLS reuse a live connection to ``dest`` (also one the peer opened) or open one. Raises
        ``TransportError`` when refused, timed out, unreachable (ICMP) or without a matching listener.
        """
        transport = dest.transport
        if transport == "udp":
            host = dest.host
            if self._literal.get(host) is not True:
                host = await self._ip_host(host)
            endpoint = self._udp_by_family.get(family_of(host))
            if endpoint is None:
                raise TransportError(f"no udp listener for {dest.host}")
            await endpoint.send(msg.to_bytes(), host, dest.port)
        elif transport in STREAM_TRANSPORTS or transport in WS_TRANSPORTS:
            await self._send_stream(msg, dest)
        else:
            raise TransportError(f"unsupported transport {transport!r}")

    async def send_response(self, msg: Message, flow: Flow, *, no_connect: bool = False) -> None:
        """Send a response per RFC 3261 18.2.2 and RFC 3581 4 along the request's ``flow``.

        Reliable: the request's connection while open, else a connection to the top Via's ``received``
        (or sent-by host) at ``rport`` (or sent-by port, or 5060); with ``no_connect`` (Kamailio's
        ``set_reply_no_connect``) only an open connection is used and ``TransportError`` raised otherwise. UDP: ``maddr`` when present, else
        ``received``/sent-by host at ``rport``/sent-by port/5060, sent from the socket the request came in on.
        """
        if flow.reliable:
            conn = flow.connection
            if conn is not None and not conn.closed:
                _ensure_content_length(msg)
                try:
                    await conn.send(msg.to_bytes())
                except TransportError:
                    pass  # 18.2.2: the connection is gone: open a new one below
                else:
                    self._stats.tcp_messages_out += 1
                    return
            await self._send_stream(msg, _response_address(msg, flow.transport), no_connect=no_connect)
            return
        try:
            host, port = response_target(msg.top_via, "udp")
        except SIPError as exc:
            raise TransportError(f"cannot route the response by its Via: {exc}") from exc
        if self._literal.get(host) is not True:
            host = await self._ip_host(host)
        endpoint = flow.endpoint
        family = family_of(host)
        if endpoint is None or endpoint.family != family:
            endpoint = self._udp_by_family.get(family)
            if endpoint is None:
                raise TransportError(f"no udp listener for {host}")
        await endpoint.send(msg.to_bytes(), host, port)

    async def _send_stream(self, msg: Message, dest: Address, *, no_connect: bool = False) -> None:
        if dest.transport in WS_TRANSPORTS:
            await self._send_ws(msg, dest)
            return
        if dest.transport not in STREAM_TRANSPORTS:
            raise TransportError(f"unsupported transport {dest.transport!r}")
        name = self._server_names.get(dest) if dest.transport == "tls" else None
        host = await self._ip_host(dest.host)
        if host != dest.host:
            name = name or dest.host  # a Via sent-by or maddr name: the certificate must carry it
            dest = Address(dest.transport, host, dest.port)
        _ensure_content_length(msg)
        data = msg.to_bytes()
        listener = self._tcp_by_family.get((dest.transport, family_of(host)))
        local_host = listener.local.host if listener is not None else None
        reused = self.connection(dest) is not None
        if no_connect and not reused:
            raise TransportError(f"no open connection to {dest}, none may be opened (reply_no_connect)")
        conn = await self._tcp.connection_to(dest, local_host, name)
        try:
            await conn.send(data)
        except TransportError:
            if reused and not no_connect:
                # A reused connection may have died since its last use: one fresh attempt.
                conn = await self._tcp.connection_to(dest, local_host, name)
                await conn.send(data)
            else:
                raise
        self._stats.tcp_messages_out += 1

    async def _send_ws(self, msg: Message, dest: Address) -> None:
        # RFC 7118: only over the connection the WebSocket peer opened; never a name lookup (browsers use
        # ".invalid" hosts), never a new connection. A peer that has gone away fails at once.
        conn = self.connection(dest)
        if conn is None:
            raise TransportError(f"no open websocket connection to {dest}")
        _ensure_content_length(msg)
        await conn.send(msg.to_bytes())
        self._stats.tcp_messages_out += 1

    async def _ip_host(self, host: str) -> str:
        # Destinations are normally IP literals (RFC 3263 resolution happens above this layer); a name
        # (a Via sent-by or maddr) is resolved here so that sendto never blocks on DNS.
        literal = self._literal.get(host)
        if literal is None:
            try:
                ipaddress.ip_address(host)
                literal = True
            except ValueError:
                literal = False
            if len(self._literal) >= _LITERAL_CACHE_MAX:
                self._literal.clear()
            self._literal[host] = literal
        if literal:
            return host
        try:
            infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransportError(f"cannot resolve {host}: {exc}") from exc
        stream_families = {family for _transport, family in self._tcp_by_family}
        for family, _type, _proto, _canon, sockaddr in infos:
            if family in self._udp_by_family or family in stream_families:
                return str(sockaddr[0])
        raise TransportError(f"no listener for the address family of {host}")


async def _supervised(where: str, sock: Any, loop: Callable[..., Awaitable[None]], *args: Any) -> None:
    """The boundary of a listener's loop: a fault is logged and counted and the loop starts again (after a
    short pause, so a fault that repeats cannot spin); it ends only with cancellation or a closed socket."""
    while True:
        try:
            await loop(*args)
            return
        except Exception as exc:
            if sock.fileno() == -1:
                return  # closed under us: shutting down
            contain(where, exc)
        await trio.sleep(_RESTART_PAUSE)


def _response_address(msg: Message, transport: str) -> Address:
    try:
        return response_address(msg.top_via, transport)
    except SIPError as exc:
        raise TransportError(f"cannot route the response by its Via: {exc}") from exc


def _ensure_content_length(msg: Message) -> None:
    # RFC 3261 18.3: on a stream transport Content-Length MUST be present.
    if not msg.has("Content-Length"):
        msg.set("Content-Length", str(len(msg.body)))
