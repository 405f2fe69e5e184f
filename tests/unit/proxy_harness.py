"""A fake transport and a small SIP peer kit for proxy tests on virtual time (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trioproxy.proxy import Proxy, Router
from trioproxy.sip import Address, Request, Response, make_response, new_branch
from trioproxy.testing.network import CALLER, PROXY, FakeFlow, FakeTransport, Sent
from trioproxy.transaction import Timers

__all__ = ["CALLER", "PROXY", "FakeFlow", "FakeTransport", "Sent", "invite", "reply", "running_proxy"]

def invite(uri: str = "sip:bob@127.0.0.1", *, branch: str | None = None, extra: str = "", method: str = "INVITE",
           call_id: str = "call-1@127.0.0.2", cseq: int = 1, to_tag: str = "") -> bytes:
    """A request as a caller at CALLER would send it."""
    branch = branch or new_branch()
    to = "<sip:bob@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER.host}:{CALLER.port};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "From: Alice <sip:alice@127.0.0.2>;tag=a1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@127.0.0.2:5060>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def reply(request: Request, status: int, tag: str = "uas", headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A response a downstream UAS sends to a request the proxy forwarded."""
    resp = make_response(request, status, to_tag=tag if status > 100 else None)
    for name, value in headers:
        resp.append(name, value)
    return resp


@asynccontextmanager
async def running_proxy(router: Router, *, timers: Timers | None = None,
                        transport: FakeTransport | None = None) -> AsyncIterator[tuple[Proxy, FakeTransport]]:
    net = transport or FakeTransport()

    async def locate(uri: Any) -> list[Address]:
        return [Address(uri.transport or "udp", uri.host, uri.port or 5060)]

    proxy = Proxy(net, router, timers=timers or Timers(), locate=locate)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy, net
        nursery.cancel_scope.cancel()
