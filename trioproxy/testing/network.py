"""A fake network for driving the proxy core without sockets (tests and offline route tests)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import trio

from trioproxy.sip import Address, Request, Response, parse_message_untrusted
from trioproxy.transport import TransportError

__all__ = ["CALLER", "PROXY", "FakeFlow", "FakeTransport", "Sent"]

PROXY = Address("udp", "127.0.0.1", 5060)
CALLER = Address("udp", "127.0.0.2", 5060)


@dataclass(frozen=True)
class FakeFlow:
    transport: str
    local: Address
    remote: Address
    reliable: bool = False


@dataclass
class Sent:
    msg: Request | Response
    dest: Address | None = None  # requests
    flow: Any = None  # responses


@dataclass
class FakeTransport:
    """Records what the proxy sends; lets the test inject what peers send."""

    sent: list[Sent] = field(default_factory=list)
    unreachable: set[Address] = field(default_factory=set)
    reliable: bool = False

    def __post_init__(self) -> None:
        self._send, self.incoming = trio.open_memory_channel[Any](100)
        self._changed = trio.Event()

    async def send_request(self, msg: Request, dest: Address) -> None:
        if dest in self.unreachable:
            raise TransportError(f"{dest} unreachable")
        self._record(Sent(parse_message_untrusted(msg.to_bytes()), dest=dest))

    async def send_response(self, msg: Response, flow: Any) -> None:
        self._record(Sent(parse_message_untrusted(msg.to_bytes()), flow=flow))

    def _record(self, item: Sent) -> None:
        self.sent.append(item)
        self._changed.set()
        self._changed = trio.Event()

    def local_address(self, transport: str, family: socket.AddressFamily = socket.AF_INET) -> Address:
        return Address(transport, PROXY.host, PROXY.port)

    def listen_addresses(self) -> list[Address]:
        return [PROXY, Address("tcp", PROXY.host, PROXY.port)]

    def record_address(self, local: Address) -> Address:
        return local

    async def inject(self, data: bytes | Request | Response, source: Address) -> None:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        msg = parse_message_untrusted(raw)
        msg.source = source
        msg.flow = FakeFlow(source.transport, PROXY, source, reliable=source.reliable)
        await self._send.send(msg)

    # -- waiting for what the proxy sent -------------------------------------------------------------------

    async def wait_for(self, pred: Any, *, start: int = 0, within: float = 300) -> Sent:
        """The first item sent (from index ``start``) matching ``pred``; waits in virtual time."""
        with trio.fail_after(within):
            while True:
                for item in self.sent[start:]:
                    if pred(item):
                        return item
                await self._changed.wait()

    async def request_to(self, dest: Address, method: str = "INVITE", **kw: Any) -> Request:
        item = await self.wait_for(
            lambda s: s.dest == dest and isinstance(s.msg, Request) and s.msg.method == method, **kw
        )
        assert isinstance(item.msg, Request)
        return item.msg

    async def response_up(self, status: int, **kw: Any) -> Response:
        item = await self.wait_for(
            lambda s: s.dest is None and isinstance(s.msg, Response) and s.msg.status == status, **kw
        )
        assert isinstance(item.msg, Response)
        return item.msg

    def requests_to(self, dest: Address, method: str) -> list[Request]:
        return [
            s.msg for s in self.sent if s.dest == dest and isinstance(s.msg, Request) and s.msg.method == method
        ]

    def responses_up(self, status: int | None = None) -> list[Response]:
        return [
            s.msg
            for s in self.sent
            if s.dest is None and isinstance(s.msg, Response) and (status is None or s.msg.status == status)
        ]
