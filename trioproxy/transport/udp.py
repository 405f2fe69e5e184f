"""UDP: one plain non-blocking socket per listener, driven by trio's readiness waits.

Theory of operation. The receive loop drains ``recvfrom`` until it would block and parks in
``trio.lowlevel.wait_readable`` only then; sending is a plain ``sendto`` that waits for writability only on
EAGAIN. This skips trio's socket wrappers, which cost roughly 10-20 us per datagram here (DESIGN.md, "The
per-datagram floor"). The loop yields to the scheduler every ``_BATCH`` datagrams so a flood cannot starve
the tasks that consume ``incoming``; when ``incoming`` is full the datagram is dropped and counted.
Before a datagram is parsed the ingress gate decides on its raw bytes: pike (blocked sources), then overload
shedding (``gate.shedder``, ``trioproxy.flood.shed``), which answers a refused new request with 503 itself,
absorbs the ACKs and retransmissions of refused requests, and leaves the rest to the parser and the core.

ICMP errors: Linux reports "port unreachable" for an unconnected UDP socket only with ``IP_RECVERR`` (or
``IPV6_RECVERR``) set. Then the next syscall on the socket fails with ECONNREFUSED and the error queue
(``recvmsg(MSG_ERRQUEUE)``) names the original destination. Whoever sees the error drains the queue into a
small table of unreachable destinations; the next send to such a destination raises ``TransportError``
(RFC 3261 18.4: an ICMP error is a transport failure for the transaction). A datagram received from a
destination removes it from the table: a new peer that starts on the port of one that went away (a phone
that restarts) is answered at once, never refused on the older report.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

from trioproxy.faults import contain
from trioproxy.flood import FloodGate, Verdict
from trioproxy.flood.shed import IngressShedder
from trioproxy.sip import Address, SIPError, parse_message_untrusted

from .inbound import answerable_request, flood_reply, is_blank
from .types import Flow, Listen, Malformed, TransportConfig, TransportError, TransportStatistics

__all__ = ["UDPEndpoint"]

log = logging.getLogger("trioproxy.transport")

_RECV_SIZE = 65535
_BATCH = 64  # datagrams handled before yielding to other tasks
_FLOW_CACHE_MAX = 4096  # remote (host, port) -> Flow, rebuilt from scratch when full
_UNREACHABLE_MAX = 1024
_UNREACHABLE_TTL = 32.0  # seconds an ICMP report stays relevant (Timer B's default span)
# Linux values; Python 3.11's socket module does not export them.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)

Deliver = Callable[[object], None]

_SO_TIMESTAMPNS = 35  # Linux (asm-generic); SCM_TIMESTAMPNS has the same value
_TS_SPACE = socket.CMSG_SPACE(16)  # struct timespec


def _enable_timestamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _enable_recverr(sock: socket.socket, family: socket.AddressFamily) -> bool:
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    except OSError:
        return False
    return True


class UDPEndpoint:
    """A bound UDP socket: ``receive_loop`` feeds ``incoming``; ``send`` writes one datagram."""

    def __init__(
        self, listen: Listen, config: TransportConfig, stats: TransportStatistics, gate: FloodGate | None = None
    ) -> None:
        family = listen.family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # Keep IPv6 listeners IPv6-only so an IPv4 listener can share the port number.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for option, size in (
                (socket.SO_RCVBUF, config.udp_rcvbuf),
                (socket.SO_SNDBUF, config.udp_sndbuf),
            ):
                if size:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, option, size)
                    except OSError:  # pragma: no cover - capped by the system, keep its default
                        pass
            if config.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((listen.host, listen.port))
            sock.setblocking(False)
            self._recverr = _enable_recverr(sock, family)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.family = family
        port = sock.getsockname()[1]
        self.local = Address("udp", listen.host, port)
        self.advertised = Address("udp", listen.advertise or listen.host, port)
        self._stats = stats
        self._flows: dict[tuple[Any, ...], Flow] = {}
        self._unreachable: dict[tuple[str, int], tuple[float, int]] = {}
        self.gate = gate
        self.max_message_size = config.udp_max_message_size
        # How long the first datagram of the last batch waited in the kernel's receive queue (SO_TIMESTAMPNS;
        # 0 once the socket is read empty): the proxy's overload detector reads it (``Transports.receive_backlog``).
        self.queue_age = 0.0
        self._stamped = _enable_timestamps(sock)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    def flow_for(self, addr: tuple[Any, ...]) -> Flow:
        """The (cached) Flow of datagrams from ``addr`` on this socket."""
        flow = self._flows.get(addr)
        if flow is None:
            if len(self._flows) >= _FLOW_CACHE_MAX:
                self._flows.clear()
            flow = Flow("udp", self.local, Address("udp", addr[0], addr[1]), False, None, self)
            # Keyed by the address tuple as recvfrom returns it (4 items for IPv6).
            self._flows[addr] = flow
        return flow

    async def receive_loop(self, deliver: Deliver) -> None:
        """Receive forever; ``deliver`` is the channel's ``send_nowait``. Cancel to stop."""
        sock = self.sock
        recvfrom = sock.recvfrom
        wait_readable = trio.lowlevel.wait_readable
        parse = parse_message_untrusted
        flows = self._flows
        stats = self._stats
        unreachable = self._unreachable
        gate = self.gate
        tracker = gate.tracker if gate is not None else None
        max_size = self.max_message_size
        handled = 0
        woke = False
        stamped = self._stamped
        while True:
            try:
                if handled == 0 and stamped:
                    # One datagram per batch is read with its kernel arrival time: the queue's age.
                    data, ancdata, _flags, addr = sock.recvmsg(_RECV_SIZE, _TS_SPACE)
                    self._note_age(ancdata)
                else:
                    data, addr = recvfrom(_RECV_SIZE)
            except BlockingIOError:
                self.queue_age = 0.0
                if woke:
                    # Woken with nothing to read: a pending error-queue entry (EPOLLERR) would keep
                    # waking us, so read it out.
                    self._drain_errors()
                handled = 0
                await wait_readable(sock)
                woke = True
                continue
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise
                # An ICMP report (IP_RECVERR sets the socket error): the queue says for whom. Reading the
                # error cleared it, so this cannot spin.
                self._drain_errors()
                continue
            woke = False
            stats.udp_datagrams_in += 1
            if unreachable:
                # A datagram from an address proves it reachable now, whatever ICMP said of it before (a
                # phone that comes back on the same port must be answered).
                unreachable.pop((addr[0], addr[1]), None)
            try:
                verdict = Verdict.PASS
                if gate is not None and (gate.enabled or tracker.blocked):  # type: ignore[union-attr]
                    # The ingress gate (pike): before anything is parsed, on the source address alone.
                    verdict = gate.admit(addr[0], data, trio.current_time())
                if verdict is not Verdict.PASS:
                    self._refuse(data, addr, verdict)
                elif len(data) > max_size:
                    stats.oversize += 1  # [limits] udp_max_message_size: dropped unparsed
                elif (shedder := gate.shedder if gate is not None else None) is not None and (
                    answer := shedder.screen(data, addr[0], addr[1])
                ) is not None:
                    # Overload (trioproxy.flood.shed): refused or absorbed on the raw bytes, before the parser.
                    if answer:
                        self._send_now(answer, addr)
                else:
                    flow = flows.get(addr)
                    if flow is None:
                        flow = self.flow_for(addr)
                    try:
                        msg = parse(data)
                    except SIPError as exc:
                        self._reject(data, flow, exc, deliver)
                    else:
                        msg.source = flow.remote
                        msg.flow = flow
                        try:
                            deliver(msg)
                        except (trio.WouldBlock, trio.BrokenResourceError):
                            stats.udp_drops += 1
            except Exception as exc:  # boundary of one datagram: a bug here must not stop the listener
                stats.parse_errors += 1
                contain("udp", exc, detail=f"datagram from {addr[0]}:{addr[1]}")
            handled += 1
            if handled >= _BATCH:
                handled = 0
                await trio.lowlevel.checkpoint()

    def _note_age(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = struct.unpack_from("=qq", payload)
                self.queue_age = max(0.0, time.time() - sec - nsec * 1e-9)

    def _refuse(self, data: bytes, addr: tuple[Any, ...], verdict: Verdict) -> None:
        # A blocked source: dropped, or answered 503 to its source address (never to its Via, which could
        # name a third party) without a transaction.
        if verdict is Verdict.REJECT and self.gate is not None:
            reply = flood_reply(data, self.gate.retry_after)
            if reply is not None:
                try:
                    self.sock.sendto(reply, addr)
                except OSError:
                    pass
                else:
                    self._stats.udp_datagrams_out += 1
                    self._stats.flood_rejected += 1
                    return
        self._stats.flood_dropped += 1

    def _send_now(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # A stateless answer from the receive path: never waits; a full socket buffer drops it (the caller
        # retransmits, and gets the same answer again).
        try:
            self.sock.sendto(data, addr)
        except OSError:
            self._stats.send_errors += 1
        else:
            self._stats.udp_datagrams_out += 1

    @property
    def shedder(self) -> IngressShedder | None:
        """The overload shedder this endpoint consults (set on its gate), or None."""
        return self.gate.shedder if self.gate is not None else None

    def _reject(self, data: bytes, flow: Flow, exc: SIPError, deliver: Deliver) -> None:
        stats = self._stats
        if is_blank(data):
            stats.keepalives += 1
            return
        stats.parse_errors += 1
        if answerable_request(data):
            try:
                deliver(Malformed(data, flow.remote, flow, exc))
            except (trio.WouldBlock, trio.BrokenResourceError):
                stats.udp_drops += 1
            else:
                stats.malformed_delivered += 1

    async def send(self, data: bytes, host: str, port: int) -> None:
        """Send one datagram to ``(host, port)`` (an IP literal); ``TransportError`` on ICMP or OS errors."""
        addr = (host, port)
        if self._unreachable:
            self._check_unreachable(addr)
        retried = False
        while True:
            try:
                self.sock.sendto(data, addr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as exc:
                if not retried and exc.errno != errno.EBADF:
                    # A pending socket error may belong to an earlier datagram to anyone (IP_RECVERR):
                    # read the queue to learn whom, then try once more.
                    retried = True
                    self._drain_errors()
                    self._check_unreachable(addr)
                    continue
                self._stats.send_errors += 1
                raise TransportError(f"udp send to {host}:{port} failed: {exc}") from exc
            self._stats.udp_datagrams_out += 1
            return

    def _check_unreachable(self, addr: tuple[str, int]) -> None:
        seen = self._unreachable.pop(addr, None)
        if seen is None:
            return
        when, err = seen
        if trio.current_time() - when <= _UNREACHABLE_TTL:
            self._stats.send_errors += 1
            raise TransportError(
                f"udp destination {addr[0]}:{addr[1]} unreachable: {errno.errorcode.get(err, err)}"
            )

    def _drain_errors(self) -> None:
        # ip(7) IP_RECVERR: each entry is a sock_extended_err; msg_name is the original destination.
        if not self._recverr:
            return
        now = trio.current_time()
        for _ in range(256):
            try:
                _data, ancdata, _flags, addr = self.sock.recvmsg(1, 512, _MSG_ERRQUEUE)
            except OSError:
                return
            err = errno.ECONNREFUSED
            for _level, _type, payload in ancdata:
                if len(payload) >= 4:
                    err = struct.unpack_from("=I", payload)[0]
            self._stats.udp_icmp_errors += 1
            if err not in _UNREACHABLE_ERRNOS or not isinstance(addr, tuple):
                continue  # e.g. EMSGSIZE (path MTU): not a reason to fail the destination
            if len(self._unreachable) >= _UNREACHABLE_MAX:
                del self._unreachable[next(iter(self._unreachable))]
            self._unreachable[(addr[0], addr[1])] = (now, err)
