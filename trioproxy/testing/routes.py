"""Offline route tests: drive a Lua route script through the real proxy core on virtual time.

A route test builds a ``RouteTest`` around a script, sends synthetic requests as a caller would, plays the
downstream user agents (answering each branch the proxy sends), and asserts what the proxy decided: the
replies the caller got, the branches and their headers. Nothing listens on a socket and no time passes
for real: run the test with trio's ``MockClock`` (pytest-trio's ``autojump_clock`` fixture), so that Timer B
or a 30 s ring timeout takes no time at all.

    async def test_ring_all(autojump_clock):
        async with RouteTest("examples/routes/ring-all.lua") as rt:
            await rt.register("bob", "sip:bob@127.0.0.21")
            await rt.register("bob", "sip:bob@127.0.0.22")
            call = await rt.call("sip:bob@example.com")
            desk, mobile = await call.branches(2)
            await desk.reply(180)
            await mobile.reply(200)
            assert (await call.final()).status == 200
            assert await desk.cancelled()
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from trioproxy.location import MemoryStore, Registrar, RegistrarPolicy
from trioproxy.proxy import Proxy
from trioproxy.routing.holder import ScriptHolder
from trioproxy.routing.router import LuaRouter
from trioproxy.sip import URI, Address, Request, Response, make_response, new_branch
from trioproxy.testing.network import CALLER, FakeTransport, Sent
from trioproxy.transaction import Timers

__all__ = ["Call", "Leg", "RouteTest"]

_ids = itertools.count(1)


class Leg:
    """One branch the proxy sent downstream: its request, and the downstream side's answers."""

    def __init__(self, rt: RouteTest, sent: Sent) -> None:
        assert isinstance(sent.msg, Request) and sent.dest is not None
        self.rt = rt
        self.request: Request = sent.msg
        self.dest: Address = sent.dest
        self.tag = f"uas{next(_ids)}"

    @property
    def uri(self) -> str:
        return str(self.request.uri)

    async def reply(self, status: int, reason: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer this branch's request (a downstream UA's response)."""
        resp = make_response(self.request, status, reason, to_tag=self.tag if status > 100 else None)
        for name, value in headers:
            resp.append(name, value)
        await self.rt.net.inject(resp, self.dest)

    async def cancelled(self, within: float = 64.0) -> bool:
        """Whether the proxy sent a CANCEL for this branch (waiting up to ``within`` virtual seconds);
        answers it with 200 and the INVITE with 487, as a UA would."""
        branch = self.request.top_via.branch
        with trio.move_on_after(within):
            item = await self.rt.net.wait_for(
                lambda s: s.dest == self.dest
                and isinstance(s.msg, Request)
                and s.msg.method == "CANCEL"
                and s.msg.top_via.branch == branch
            )
            assert isinstance(item.msg, Request)
            await self.rt.net.inject(make_response(item.msg, 200, to_tag=self.tag), self.dest)
            await self.reply(487)
            return True
        return False


class Call:
    """A request a caller sent through the proxy, and what came back to the caller."""

    def __init__(self, rt: RouteTest, request: bytes, start: int) -> None:
        self.rt = rt
        self.raw = request
        self.start = start  # index in the sent log where this call began
        self.seen: set[int] = set()

    async def branch(self, method: str | None = None, *, within: float = 300.0) -> Leg:
        """The next request the proxy sent downstream for this call."""
        call_id = self.call_id

        def match(s: Sent) -> bool:
            return (
                s.dest is not None
                and isinstance(s.msg, Request)
                and s.msg.call_id == call_id
                and s.msg.method not in ("ACK", "CANCEL")
                and (method is None or s.msg.method == method)
                and id(s) not in self.seen
            )

        item = await self.rt.net.wait_for(match, start=self.start, within=within)
        self.seen.add(id(item))
        return Leg(self.rt, item)

    async def branches(self, count: int, *, within: float = 300.0) -> list[Leg]:
        """The next ``count`` branches (parallel forking)."""
        return [await self.branch(within=within) for _ in range(count)]

    @property
    def call_id(self) -> str:
        return self.raw.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()

    def responses(self) -> list[Response]:
        """Everything the caller received so far for this call, in order."""
        return [
            s.msg
            for s in self.rt.net.sent[self.start :]
            if s.dest is None and isinstance(s.msg, Response) and s.msg.call_id == self.call_id
        ]

    async def response(self, status: int, *, within: float = 300.0) -> Response:
        item = await self.rt.net.wait_for(
            lambda s: s.dest is None
            and isinstance(s.msg, Response)
            and s.msg.call_id == self.call_id
            and s.msg.status == status,
            start=self.start,
            within=within,
        )
        assert isinstance(item.msg, Response)
        return item.msg

    async def final(self, *, within: float = 300.0) -> Response:
        """The first final response the caller got."""
        item = await self.rt.net.wait_for(
            lambda s: s.dest is None
            and isinstance(s.msg, Response)
            and s.msg.call_id == self.call_id
            and s.msg.status >= 200,
            start=self.start,
            within=within,
        )
        assert isinstance(item.msg, Response)
        return item.msg


class RouteTest:
    """The real proxy core and a route script on a fake network: see the module docstring."""

    def __init__(
        self,
        script: str | Path,
        *,
        domains: Sequence[str] = ("example.com",),
        hosts: Mapping[str, Address] | None = None,
        timers: Timers | None = None,
        instruction_budget: int = 1_000_000,
    ) -> None:
        self.script = Path(script)
        self.domains = list(domains)
        self.hosts = dict(hosts or {})
        self.timers = timers or Timers()
        self.net = FakeTransport()
        self.holder = ScriptHolder(instruction_budget=instruction_budget)
        self.registrar = Registrar(MemoryStore(), RegistrarPolicy())
        self.proxy: Proxy | None = None
        self._cm: Any = None
        self._nursery: trio.Nursery | None = None

    async def _locate(self, uri: URI) -> list[Address]:
        host = uri.params.get("maddr") or uri.host
        transport = uri.transport or "udp"
        if host in self.hosts:
            a = self.hosts[host]
            return [Address(a.transport, a.host, uri.port or a.port)]
        if host.replace(".", "").isdigit() or ":" in host:
            return [Address(transport, host, uri.port or 5060)]
        return []  # an unknown name: as if DNS had no record

    async def __aenter__(self) -> RouteTest:
        result = self.holder.reload(self.script)
        if not result.ok:
            raise AssertionError(f"route script refused: {'; '.join(result.errors)}")
        router = LuaRouter(self.holder, self.registrar)
        self.proxy = Proxy(self.net, router, timers=self.timers, locate=self._locate, domains=self.domains)
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        await self._nursery.start(self.proxy.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        result: bool | None = await self._cm.__aexit__(exc_type, exc, tb)
        return result

    # -- building and sending requests ----------------------------------------------------------------

    def request(
        self,
        method: str,
        uri: str,
        *,
        from_user: str = "alice",
        to: str | None = None,
        to_tag: str = "",
        call_id: str | None = None,
        cseq: int = 1,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        source: Address = CALLER,
        contact: str | None = None,
    ) -> bytes:
        """A request as a caller at ``source`` would send it (``contact``: the whole Contact value)."""
        host = f"[{source.host}]" if ":" in source.host else source.host
        to_value = f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{source.transport.upper()} {host}:{source.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{self.domains[0] if self.domains else 'example.com'}>;tag=f{next(_ids)}",
            f"To: {to_value}",
            f"Call-ID: {call_id or f'call{next(_ids)}@{source.host}'}",
            f"CSeq: {cseq} {method}",
            f"Contact: {contact or f'<sip:{from_user}@{host}:{source.port}>'}",
            *(f"{n}: {v}" for n, v in headers),
            f"Content-Length: {len(body)}",
            "",
            "",
        ]
        return "\r\n".join(lines).encode() + body

    async def send(self, data: bytes, source: Address = CALLER) -> Call:
        """Send a request to the proxy; returns the ``Call`` to follow it."""
        start = len(self.net.sent)
        await self.net.inject(data, source)
        return Call(self, data, start)

    async def call(self, uri: str, *, method: str = "INVITE", **kw: Any) -> Call:
        """A new out-of-dialog request (an INVITE by default) to ``uri``."""
        source = kw.pop("source", CALLER)
        return await self.send(self.request(method, uri, source=source, **kw), source)

    async def register(
        self, user: str, contact: str, *, q: float = 1.0, expires: int = 3600, source: Address | None = None
    ) -> Response:
        """Register ``contact`` for ``user`` at the first domain through the script; returns the reply."""
        domain = self.domains[0]
        src = source or _address_of(contact)
        data = self.request(
            "REGISTER",
            f"sip:{domain}",
            from_user=user,
            to=f"sip:{user}@{domain}",
            contact=f"<{contact}>;q={q};expires={expires}",
            source=src,
        )
        call = await self.send(data, src)
        return await call.final()

    def now(self) -> float:
        return time.time()


def _address_of(contact: str) -> Address:
    # sip:user@host:port -> where that UA sends from.
    rest = contact.split(":", 1)[1].split(";", 1)[0]
    hostport = rest.split("@", 1)[-1]
    host, _sep, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return Address("udp", hostport, 5060)
    return Address("udp", host, int(port))
