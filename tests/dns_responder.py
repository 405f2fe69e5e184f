"""A real DNS server for tests: UDP and TCP on 127.0.0.1, answering from a zone built with dnspython.

Usage::

    responder = DnsResponder({"example.test": {"A": ["192.0.2.1"]}})
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(responder.serve)
        ...
        nursery.cancel_scope.cancel()

Names are absolute or relative to the root (``example.test`` == ``example.test.``), case-insensitive. A name
with no record of the asked type answers NOERROR with no answer (NoAnswer); a name with no record at all answers
NXDOMAIN; both carry the zone's SOA in the authority section (RFC 2308) unless ``soa`` is None. ``silent``
(or a name in ``silent_names``) never answers; a name in ``servfail_names`` answers SERVFAIL. Every query is
counted per (name, type) in ``counts``. UDP answers larger than the query's EDNS payload (512 without EDNS)
are truncated (TC) so that clients retry over TCP on the same port.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

__all__ = ["DnsResponder", "Zone"]

# name -> rdtype -> list of rdata texts (each "rdata" with the default TTL, or "ttl=N rdata")
Zone = Mapping[str, Mapping[str, Sequence[str]]]

DEFAULT_TTL = 300


def _key(name: str | dns.name.Name) -> str:
    text = name.to_text() if isinstance(name, dns.name.Name) else name
    return text.lower().rstrip(".")


class DnsResponder:
    """An authoritative-looking DNS server for the names in its zone (see the module docstring)."""

    def __init__(
        self,
        zone: Zone | None = None,
        *,
        soa: tuple[str, int, int] | None = ("test", 3600, 60),
        default_ttl: int = DEFAULT_TTL,
    ) -> None:
        # soa: (zone apex, SOA record TTL, SOA MINIMUM); negative answers live min of the two (RFC 2308 5)
        self.default_ttl = default_ttl
        self.soa = soa
        self._records: dict[tuple[str, str], dns.rrset.RRset] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.silent = False
        self.silent_names: set[str] = set()
        self.servfail_names: set[str] = set()
        self.tcp_queries = 0
        self._waiters: list[tuple[str, int, trio.Event]] = []
        self.address: tuple[str, int] | None = None
        for name, types in (zone or {}).items():
            for rdtype, texts in types.items():
                self.add(name, rdtype, *texts)

    # -- the zone ---------------------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, *texts: str, ttl: int | None = None) -> None:
        """Add records; a text may start with its own TTL as ``ttl=N`` (``"ttl=60 192.0.2.1"``)."""
        rdtype = rdtype.upper()
        key = (_key(name), rdtype)
        existing = self._records.get(key)
        record_ttl = ttl if ttl is not None else self.default_ttl
        rdatas = [rdata.to_text() for rdata in existing] if existing is not None else []
        if existing is not None:
            record_ttl = min(existing.ttl, record_ttl)
        for text in texts:
            if text.startswith("ttl="):
                first, _, text = text.partition(" ")
                # one RRset has one TTL (RFC 2181 5.2): the smallest given
                record_ttl = min(record_ttl, int(first[4:])) if rdatas else int(first[4:])
            rdatas.append(text)
        self._records[key] = dns.rrset.from_text_list(key[0] + ".", record_ttl, "IN", rdtype, rdatas)

    def set(self, name: str, rdtype: str, *texts: str, ttl: int | None = None) -> None:
        """Replace the records of ``name``/``rdtype`` (no texts: remove them)."""
        self._records.pop((_key(name), rdtype.upper()), None)
        if texts:
            self.add(name, rdtype, *texts, ttl=ttl)

    def count(self, name: str, rdtype: str | None = None) -> int:
        """Queries received for ``name`` (of ``rdtype``, or of any type)."""
        key = _key(name)
        if rdtype is not None:
            return self.counts[(key, rdtype.upper())]
        return sum(n for (qname, _), n in self.counts.items() if qname == key)

    async def wait_for_queries(self, name: str, count: int) -> None:
        """Return once ``name`` has been asked (any type) at least ``count`` times."""
        if self.count(name) < count:
            event = trio.Event()
            self._waiters.append((_key(name), count, event))
            await event.wait()

    @property
    def total(self) -> int:
        """All queries received."""
        return sum(self.counts.values())

    # -- answering ---------------------------------------------------------------------------------------

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to ``query``, or None to stay silent."""
        if not query.question:
            return None
        question = query.question[0]
        key = _key(question.name)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.counts[(key, rdtype)] += 1
        for waiter in [w for w in self._waiters if w[0] == key and self.count(key) >= w[1]]:
            self._waiters.remove(waiter)
            waiter[2].set()
        if self.silent or key in self.silent_names:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if key in self.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        rrset = self._records.get((key, rdtype))
        if rrset is None and rdtype != "CNAME":
            cname = self._records.get((key, "CNAME"))
            if cname is not None:
                response.answer.append(cname)
                target = _key(cname[0].target)
                rrset = self._records.get((target, rdtype))
        if rrset is not None:
            response.answer.append(rrset)
            return response
        if not response.answer and not any(qname == key for qname, _ in self._records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        if self.soa is not None:
            apex, soa_ttl, minimum = self.soa
            response.authority.append(
                dns.rrset.from_text(
                    apex + ".", soa_ttl, "IN", "SOA", f"ns.{apex}. admin.{apex}. 1 3600 600 86400 {minimum}"
                )
            )
        return response

    # -- serving ------------------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve UDP and TCP on 127.0.0.1 (one free port for both) until cancelled; reports (host, port)."""
        udp, tcp = await self._bind()
        with udp, tcp:
            tcp.listen(16)
            self.address = udp.getsockname()[:2]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(self._serve_tcp, tcp, nursery)
                task_status.started(self.address)

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        # a UDP port whose number is also free for TCP: dnspython retries truncated answers on the same port
        for _ in range(50):
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await udp.bind(("127.0.0.1", 0))
            tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                await tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, peer = await sock.recvfrom(65535)
            wire = self._respond(data, udp=True)
            if wire is not None:
                await sock.sendto(wire, peer)

    async def _serve_tcp(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(self._serve_connection, trio.SocketStream(conn))

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        # RFC 1035 4.2.2: each message is preceded by a two-byte length
        buffer = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(65535)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                    size = int.from_bytes(buffer[:2], "big")
                    data, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                    self.tcp_queries += 1
                    wire = self._respond(data, udp=False)
                    if wire is not None:
                        await stream.send_all(len(wire).to_bytes(2, "big") + wire)

    def _respond(self, data: bytes, *, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        response = self.answer(query)
        if response is None:
            return None
        if not udp:
            return response.to_wire()
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 9: too big for UDP -> an empty answer with TC set; the client retries over TCP
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()
